// Package record holds the processor's per-job record logic as pure
// functions: a record is a jobsv1.Job whose executions list every attempt.
// Nothing here does I/O, so the rules (which update applies, which is stale,
// which is a duplicate to re-announce) are table-tested in isolation, and the
// caller wraps them in a compare-and-set loop on the KV revision.
package record

import (
	"fmt"
	"strconv"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Outcome says what applying a change did to a record.
type Outcome int

const (
	// Ignored: the change does not apply (stale attempt, terminal record, a
	// move the status machine forbids, progress going backwards). Nothing to
	// write, nothing to announce.
	Ignored Outcome = iota
	// Applied: the record changed; write it (CAS) and then announce it.
	Applied
	// AlreadyApplied: the record already reflects the change (a redelivery,
	// perhaps after a crash between the write and the announcement). Nothing
	// to write, but announce again: the deterministic msg id makes the
	// announcement exactly-once.
	AlreadyApplied
)

func (o Outcome) String() string {
	switch o {
	case Applied:
		return "applied"
	case AlreadyApplied:
		return "already-applied"
	}
	return "ignored"
}

// Problem types the processor reports.
const (
	ProblemNoService       = problem.TypePrefix + "no-service"
	ProblemExecutionFailed = problem.TypePrefix + "execution-failed"
	ProblemWorkerLost      = problem.TypePrefix + "worker-lost"
	ProblemTimeout         = problem.TypePrefix + "job-timeout-passed"
	ProblemDeadline        = problem.TypePrefix + "job-deadline-passed"
	// ProblemServiceGone ends an execution no worker started because its
	// service lost every instance; the job moved on to another service.
	ProblemServiceGone = problem.TypePrefix + "service-unavailable"
)

// HeartbeatMessage is the status message of a worker's heartbeat update; it
// proves the worker alive and is not the job's news.
const HeartbeatMessage = "heartbeat"

// New returns the record of a freshly created job: a copy of job, QUEUED, with
// no executions yet. create_time is kept (a first run's queue timeout counts
// from it, see QueuedSince).
func New(job *jobsv1.Job, now time.Time) *jobsv1.Job {
	rec := proto.CloneOf(job)
	rec.Status = jobsv1.JobStatus_JOB_STATUS_QUEUED
	rec.Progress = 0
	rec.Executions = nil
	rec.Output = nil
	rec.Error = nil
	rec.EndTime = nil
	rec.VerifiedQuantity = 0
	if rec.GetCreateTime() == nil {
		rec.CreateTime = timestamppb.New(now)
	}
	rec.UpdateTime = timestamppb.New(now)
	return rec
}

// NextAttempt is the attempt number the next dispatch of rec gets: that of
// the execution a restart added (see Restart) while it waits, else a new one.
func NextAttempt(rec *jobsv1.Job) int32 {
	if cur := jobstate.Current(rec); undispatched(cur) {
		return cur.GetAttempt()
	}
	return int32(len(rec.GetExecutions())) + 1
}

// undispatched reports whether ex is an execution a restart added that has
// not been dispatched (yet): QUEUED, with no service.
func undispatched(ex *jobsv1.Execution) bool {
	return ex != nil && ex.GetStatus() == jobsv1.JobStatus_JOB_STATUS_QUEUED
}

// Schedule records the dispatch of a QUEUED job to service: as a new
// execution, or as the one a restart added for it. A job that is no longer
// QUEUED was dispatched already (another replica, or an earlier delivery):
// AlreadyApplied when it sits SCHEDULED, so the caller re-publishes the
// same work item (deduplicated by its msg id), else Ignored.
func Schedule(rec *jobsv1.Job, service string, now time.Time) Outcome {
	switch rec.GetStatus() {
	case jobsv1.JobStatus_JOB_STATUS_QUEUED:
	case jobsv1.JobStatus_JOB_STATUS_SCHEDULED:
		return AlreadyApplied
	default:
		return Ignored
	}
	if cur := jobstate.Current(rec); undispatched(cur) {
		cur.Service = service
		cur.Status = jobsv1.JobStatus_JOB_STATUS_SCHEDULED
		cur.DispatchTime = timestamppb.New(now)
	} else {
		rec.Executions = append(rec.Executions, &jobsv1.Execution{
			Attempt:      NextAttempt(rec),
			Service:      service,
			Status:       jobsv1.JobStatus_JOB_STATUS_SCHEDULED,
			DispatchTime: timestamppb.New(now),
		})
	}
	rec.Status = jobsv1.JobStatus_JOB_STATUS_SCHEDULED
	rec.Progress = 0
	rec.UpdateTime = timestamppb.New(now)
	return Applied
}

// Fail ends a job that has no running execution (e.g. no service offers its
// profile) as FAILED with p.
func Fail(rec *jobsv1.Job, p *jobsv1.Problem, now time.Time) Outcome {
	if rec.GetStatus() == jobsv1.JobStatus_JOB_STATUS_FAILED && proto.Equal(rec.GetError(), p) {
		return AlreadyApplied
	}
	if !jobstate.CanTransition(rec.GetStatus(), jobsv1.JobStatus_JOB_STATUS_FAILED) {
		return Ignored
	}
	rec.Status = jobsv1.JobStatus_JOB_STATUS_FAILED
	rec.Error = p
	rec.StatusMessage = p.GetDetail()
	rec.EndTime = timestamppb.New(now)
	rec.UpdateTime = rec.EndTime
	if cur := jobstate.Current(rec); cur != nil && !jobstate.IsTerminal(cur.GetStatus()) {
		cur.Status = jobsv1.JobStatus_JOB_STATUS_FAILED
		cur.Error = p
		cur.EndTime = rec.EndTime
	}
	return Applied
}

// NoService is the problem of a job no live service offered to run within the
// queue timeout.
func NoService(profile string) *jobsv1.Problem {
	return &jobsv1.Problem{
		Type:   ProblemNoService,
		Title:  "No service available",
		Detail: fmt.Sprintf("no service offers profile %q", profile),
		Status: 503,
	}
}

// Cancel ends a job at the client's request, and its current execution too.
func Cancel(rec *jobsv1.Job, now time.Time) Outcome {
	if rec.GetStatus() == jobsv1.JobStatus_JOB_STATUS_CANCELED {
		return AlreadyApplied
	}
	if !jobstate.CanTransition(rec.GetStatus(), jobsv1.JobStatus_JOB_STATUS_CANCELED) {
		return Ignored
	}
	rec.Status = jobsv1.JobStatus_JOB_STATUS_CANCELED
	rec.StatusMessage = "canceled by request"
	rec.EndTime = timestamppb.New(now)
	rec.UpdateTime = rec.EndTime
	if cur := jobstate.Current(rec); cur != nil && !jobstate.IsTerminal(cur.GetStatus()) {
		cur.Status = jobsv1.JobStatus_JOB_STATUS_CANCELED
		cur.EndTime = rec.EndTime
	}
	return Applied
}

// Apply applies a worker's report on one attempt to rec.
//
// Only the current attempt counts: a report of an older attempt (a worker that
// lost its job to a retry) is Ignored. A terminal record never changes; a
// repeated report of the state it ended in is AlreadyApplied. Progress never
// moves backwards: a report older than the last one applied is Ignored, and
// the same report again is AlreadyApplied.
func Apply(rec *jobsv1.Job, u *eventsv1.ExecutionUpdate, now time.Time) Outcome {
	cur := jobstate.Current(rec)
	if cur == nil || u.GetAttempt() != cur.GetAttempt() || undispatched(cur) {
		// Not dispatched: no worker was handed this attempt.
		return Ignored
	}
	to := u.GetStatus()
	switch to {
	case jobsv1.JobStatus_JOB_STATUS_RUNNING, jobsv1.JobStatus_JOB_STATUS_COMPLETED,
		jobsv1.JobStatus_JOB_STATUS_FAILED, jobsv1.JobStatus_JOB_STATUS_CANCELED:
	default:
		// NEW, QUEUED, SCHEDULED are the processor's to set, never a worker's.
		return Ignored
	}
	from := cur.GetStatus()
	if jobstate.IsTerminal(rec.GetStatus()) || jobstate.IsTerminal(from) {
		if from == to && rec.GetStatus() == to {
			return AlreadyApplied
		}
		return Ignored
	}
	if !jobstate.CanTransition(from, to) {
		return Ignored
	}
	progress := clampProgress(u.GetProgress())
	if from == to { // RUNNING -> RUNNING: a progress report
		switch {
		case progress < cur.GetProgress():
			return Ignored
		case progress == cur.GetProgress():
			return AlreadyApplied
		}
	}

	at := now
	if u.GetTime().IsValid() {
		// The worker's clock says when it happened; update_time stays ours.
		at = u.GetTime().AsTime()
	}
	if u.GetInstanceId() != "" {
		cur.InstanceId = u.GetInstanceId()
	}
	if from != to {
		// A message tells about the state it came with ("restarted",
		// "worker lost; retrying"): the worker's report of a new state
		// brings its own, or none, not the last one's.
		rec.StatusMessage = ""
	}
	if u.GetMessage() != "" && u.GetMessage() != HeartbeatMessage {
		rec.StatusMessage = u.GetMessage()
	}
	cur.Status = to
	rec.Status = to
	if cur.StartTime == nil && u.GetStartTime().IsValid() {
		// A worker reports a job that ends quickly by its terminal update
		// alone, which says when it started.
		cur.StartTime = u.GetStartTime()
	}
	switch to {
	case jobsv1.JobStatus_JOB_STATUS_RUNNING:
		if from != to {
			cur.StartTime = timestamppb.New(at)
		}
		cur.Progress = progress
		rec.Progress = progress
	case jobsv1.JobStatus_JOB_STATUS_COMPLETED:
		if cur.StartTime == nil {
			cur.StartTime = timestamppb.New(at)
		}
		cur.Progress = 100
		cur.EndTime = timestamppb.New(at)
		rec.Progress = 100
		rec.Output = u.GetOutput()
		rec.VerifiedQuantity = u.GetVerifiedQuantity()
		rec.EndTime = cur.EndTime
	case jobsv1.JobStatus_JOB_STATUS_FAILED:
		p := u.GetError()
		if p == nil {
			p = &jobsv1.Problem{Type: ProblemExecutionFailed, Title: "Execution failed", Detail: u.GetMessage()}
		}
		cur.Error = p
		cur.EndTime = timestamppb.New(at)
		rec.Error = p
		rec.EndTime = cur.EndTime
		if rec.StatusMessage == "" {
			rec.StatusMessage = p.GetDetail()
		}
	case jobsv1.JobStatus_JOB_STATUS_CANCELED:
		cur.EndTime = timestamppb.New(at)
		rec.EndTime = cur.EndTime
	}
	rec.UpdateTime = timestamppb.New(now)
	return Applied
}

func clampProgress(p int32) int32 { return min(max(p, 0), 100) }

// TakeStart gives rec's current execution, ended by the processor before any
// report said a worker had started it, the start time and instance of u, a
// report of that attempt that says so: Applied when it did, else Ignored.
//
// A worker reports RUNNING only once a job has run for its running delay
// (100ms), so a cancel or the deadline within it finds the execution
// SCHEDULED, without a start, and ends it so. The worker's report that
// follows (its CANCELED, told to stop; a COMPLETED that overtook the stop;
// a RUNNING if it missed the stop) changes nothing else then, but it says
// that the attempt ran, since when, and where: without it the execution
// would read as never started, and its run time would go unmeasured.
func TakeStart(rec *jobsv1.Job, u *eventsv1.ExecutionUpdate) Outcome {
	cur := jobstate.Current(rec)
	if cur == nil || u.GetAttempt() != cur.GetAttempt() || !jobstate.IsTerminal(cur.GetStatus()) ||
		cur.GetStartTime() != nil || !u.GetStartTime().IsValid() {
		return Ignored
	}
	cur.StartTime = u.GetStartTime()
	if cur.GetInstanceId() == "" {
		cur.InstanceId = u.GetInstanceId()
	}
	return Applied
}

// StartTakenFrom reports whether u may be the report that gave rec's
// current execution, ended by the processor, its start by TakeStart: a
// report of that attempt carrying the start the execution has, which is
// not the report that ended it (a worker's end gives the execution its own
// time as its end). An execution its worker ended (COMPLETED, or FAILED
// with the worker's own problem) got its start with its end: a late
// report of it (a RUNNING redelivered after the end) gave it nothing.
func StartTakenFrom(rec *jobsv1.Job, u *eventsv1.ExecutionUpdate) bool {
	cur := jobstate.Current(rec)
	if cur == nil || u.GetAttempt() != cur.GetAttempt() || !endedByProcessor(cur) ||
		!u.GetStartTime().IsValid() || !proto.Equal(cur.GetStartTime(), u.GetStartTime()) {
		return false
	}
	return u.GetStatus() != cur.GetStatus() || !proto.Equal(cur.GetEndTime(), u.GetTime())
}

// endedByProcessor reports whether ex was ended by the processor rather
// than by its worker's report: canceled, or failed past its timeout or
// deadline, its worker lost, or its service gone.
func endedByProcessor(ex *jobsv1.Execution) bool {
	switch ex.GetStatus() {
	case jobsv1.JobStatus_JOB_STATUS_CANCELED:
		return true
	case jobsv1.JobStatus_JOB_STATUS_FAILED:
		switch ex.GetError().GetType() {
		case ProblemTimeout, ProblemDeadline, ProblemWorkerLost, ProblemServiceGone:
			return true
		}
	}
	return false
}

// StatusAttempt is the attempt a status of rec belongs to: the attempt it is
// queued for while QUEUED, and when it ended so, else the current one (0 if
// it never ran).
//
// A job that ended while queued again (restarted, or requeued for a retry,
// then failed by its deadline, for want of a service, or canceled before
// its next attempt was dispatched) must not announce its end under the id
// of its latest attempt's: had that attempt ended the job the same way (a
// FAILED restarted and FAILED again), the stream would drop the new
// announcement as a duplicate, and the mediator would never hear the job
// ended.
func StatusAttempt(rec *jobsv1.Job) int32 {
	if rec.GetStatus() == jobsv1.JobStatus_JOB_STATUS_QUEUED || jobstate.EndedQueued(rec) {
		return NextAttempt(rec)
	}
	return int32(len(rec.GetExecutions()))
}

// StatusMsgID is the JetStream msg id of the JobStatusChanged announcing rec's
// current state: "status-<job>-<attempt>-<STATUS>[-<progress>]", progress only
// while RUNNING, then "-requeued" for a job waiting for (or ended while
// waiting for) the retry of a lost attempt. The same state always gets the
// same id, so re-announcing it (redelivery, several replicas) is stored
// once.
//
// The suffix keeps the states of the wait apart from those of the attempt
// it waits for, which a restart of a job ended while waiting runs under
// the same number: without it the restart's QUEUED and its run's end
// (FAILED restarted and FAILED again, CANCELED restarted and CANCELED
// again) would repeat the wait's ids, and the stream would drop them as
// duplicates within its window: the mediator would never hear the run
// ended.
func StatusMsgID(rec *jobsv1.Job) string {
	id := "status-" + rec.GetId() + "-" + strconv.Itoa(int(StatusAttempt(rec))) + "-" + jobstate.Name(rec.GetStatus())
	if rec.GetStatus() == jobsv1.JobStatus_JOB_STATUS_RUNNING {
		id += "-" + strconv.Itoa(int(rec.GetProgress()))
	}
	if jobstate.Requeued(rec) {
		id += "-requeued"
	}
	return id
}

// StartMsgID is the msg id of the announcement of rec's end once its
// execution has taken the start a worker's report gave after that end
// (TakeStart): StatusMsgID's, which the end's own announcement has, then
// "-started". An execution takes a start once, so it is announced once.
func StartMsgID(rec *jobsv1.Job) string {
	return StatusMsgID(rec) + "-started"
}

// WorkItem is what the worker of rec's current execution is handed. It
// carries the job's locator roots as the record has them, absent included
// (a job from an older mediator): the worker holds the locators it
// resolves to them, and to its own roots only when they are absent.
func WorkItem(rec *jobsv1.Job) *eventsv1.WorkItem {
	cur := jobstate.Current(rec)
	return &eventsv1.WorkItem{
		JobId:        rec.GetId(),
		Tenant:       rec.GetTenant(),
		Attempt:      cur.GetAttempt(),
		Profile:      rec.GetProfile(),
		JobType:      rec.GetJobType(),
		Input:        rec.GetInput(),
		Timeout:      rec.GetTimeout(),
		Service:      cur.GetService(),
		LocatorRoots: rec.GetLocatorRoots(),
	}
}

// WorkMsgID is the msg id of the work item of rec's current execution.
func WorkMsgID(rec *jobsv1.Job) string {
	return "work-" + rec.GetId() + "-" + strconv.Itoa(int(jobstate.Current(rec).GetAttempt()))
}
