package record

import (
	"fmt"
	"strings"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/jobstate"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DefaultMaxAttempts is the attempt limit of a profile that sets none.
const DefaultMaxAttempts = 3

// exhaustedPrefix starts the detail of the worker-lost problem that ended a
// job: it marks where a later restart's attempt count starts again.
const exhaustedPrefix = "gave up after "

// WorkerLost ends attempt of rec as lost (its worker stopped heart-beating,
// or vanished): the execution FAILs with a worker-lost problem, and the job
// goes back to QUEUED for a retry (see RetryAt) unless it has now lost
// maxAttempts attempts in a row, in which case it FAILs naming the reason.
// Only the current, unfinished attempt can be lost.
func WorkerLost(rec *jobsv1.Job, attempt, maxAttempts int32, reason string, now time.Time) Outcome {
	cur := jobstate.Current(rec)
	if cur == nil || cur.GetAttempt() != attempt || jobstate.IsTerminal(rec.GetStatus()) || jobstate.IsTerminal(cur.GetStatus()) {
		return Ignored
	}
	if maxAttempts <= 0 {
		maxAttempts = DefaultMaxAttempts
	}
	end := timestamppb.New(now)
	lost := int32(1)
	if !cur.GetRestarted() { // the first attempt of a run counts afresh
		lost += lostInARow(rec.GetExecutions()[:len(rec.GetExecutions())-1])
	}
	p := &jobsv1.Problem{
		Type:   ProblemWorkerLost,
		Title:  "Worker lost",
		Detail: fmt.Sprintf("attempt %d on %s %s: %s", attempt, cur.GetService(), cur.GetInstanceId(), reason),
		Status: 503,
	}
	cur.Status = jobsv1.JobStatus_JOB_STATUS_FAILED
	cur.EndTime = end
	cur.Error = p
	rec.UpdateTime = end
	rec.Progress = 0
	if lost >= maxAttempts {
		p.Detail = fmt.Sprintf("%s%d attempts lost their worker; last: %s", exhaustedPrefix, lost, p.Detail)
		rec.Status = jobsv1.JobStatus_JOB_STATUS_FAILED
		rec.Error = p
		rec.StatusMessage = p.GetDetail()
		rec.EndTime = end
		return Applied
	}
	rec.Status = jobsv1.JobStatus_JOB_STATUS_QUEUED
	rec.StatusMessage = fmt.Sprintf("worker lost (%s); retrying, attempt %d of %d", reason, attempt+1, maxAttempts)
	return Applied
}

// Reroute moves a SCHEDULED job whose current execution, attempt, waits on
// service from with no worker having started it, to service to: the
// execution ends FAILED with ProblemServiceGone and a new one is scheduled
// on to. It is not a lost attempt: it counts against no attempt limit.
func Reroute(rec *jobsv1.Job, attempt int32, from, to string, now time.Time) Outcome {
	cur := jobstate.Current(rec)
	if rec.GetStatus() != jobsv1.JobStatus_JOB_STATUS_SCHEDULED || cur == nil || cur.GetAttempt() != attempt ||
		cur.GetService() != from || cur.GetStartTime() != nil || from == to {
		return Ignored
	}
	end := timestamppb.New(now)
	cur.Status = jobsv1.JobStatus_JOB_STATUS_FAILED
	cur.EndTime = end
	cur.Error = &jobsv1.Problem{
		Type:   ProblemServiceGone,
		Title:  "Service unavailable",
		Detail: fmt.Sprintf("attempt %d waited on %s, which has no live instance left; moved to %s", attempt, from, to),
		Status: 503,
	}
	rec.Executions = append(rec.Executions, &jobsv1.Execution{
		Attempt:      NextAttempt(rec),
		Service:      to,
		Status:       jobsv1.JobStatus_JOB_STATUS_SCHEDULED,
		DispatchTime: end,
	})
	rec.StatusMessage = fmt.Sprintf("%s has no live instance; moved to %s", from, to)
	rec.UpdateTime = end
	return Applied
}

// LostInARow counts the latest executions that ended worker-lost, back to
// the previous other ending, or to the start of the run: a restart starts
// counting afresh. Its first attempt is marked restarted; an earlier run's
// losses end at the one that exhausted its attempts (records written before
// the mark, whose restarts came only after such an end), or, when it ended
// otherwise while waiting for a retry (canceled, no service, its deadline),
// at the restart's mark.
func LostInARow(rec *jobsv1.Job) int32 { return lostInARow(rec.GetExecutions()) }

func lostInARow(ex []*jobsv1.Execution) int32 {
	var n int32
	for i := len(ex) - 1; i >= 0; i-- {
		e := ex[i].GetError()
		if e.GetType() == ProblemServiceGone {
			if ex[i].GetRestarted() {
				break
			}
			continue // moved on before any worker took it: neither a loss nor a success
		}
		if e.GetType() != ProblemWorkerLost || strings.HasPrefix(e.GetDetail(), exhaustedPrefix) {
			break
		}
		n++
		if ex[i].GetRestarted() {
			break // the first attempt of this run
		}
	}
	return n
}

// RetryAt is when a job requeued after a lost attempt may be dispatched
// again: the loss plus an exponential backoff (base, doubling with each
// loss in a row, at most 32 × base).
func RetryAt(rec *jobsv1.Job, base time.Duration) time.Time {
	cur := jobstate.Current(rec)
	if cur == nil || cur.GetEndTime() == nil {
		return time.Time{}
	}
	k := min(max(LostInARow(rec), 1), 6)
	return cur.GetEndTime().AsTime().Add(base << (k - 1))
}

// QueuedSince is when rec, QUEUED, began to wait for a service this time:
// the queue timeout counts from it. A first run waits from the job's
// creation; a restarted job from its restart (the update_time Restart
// set: nothing writes a QUEUED record before its dispatch, and a write
// would only make it wait longer); a retry from the end of its backoff,
// before which it does not look for a service (RetryAt).
func QueuedSince(rec *jobsv1.Job, backoff time.Duration) time.Time {
	if jobstate.Current(rec) == nil {
		return rec.GetCreateTime().AsTime()
	}
	since := RetryAt(rec, backoff) // zero for a restart: its execution has not ended
	for _, t := range []*timestamppb.Timestamp{rec.GetCreateTime(), rec.GetUpdateTime()} {
		if t != nil && t.AsTime().After(since) {
			since = t.AsTime()
		}
	}
	return since
}

// Expire ends a job whose timeout or deadline passed (p says which) as
// FAILED, and its current execution with it; the caller stops the worker.
// attempt is the attempt whose timeout passed, 0 for the deadline, which
// ends whatever runs. A timeout judged on an attempt that has ended since
// (lost, or canceled and the job restarted) is Ignored: the attempt after
// it has a timeout of its own, from its own start.
func Expire(rec *jobsv1.Job, attempt int32, p *jobsv1.Problem, now time.Time) Outcome {
	if cur := jobstate.Current(rec); attempt > 0 && !jobstate.IsTerminal(rec.GetStatus()) &&
		(cur.GetAttempt() != attempt || jobstate.IsTerminal(cur.GetStatus())) {
		return Ignored
	}
	return Fail(rec, p, now)
}

// TimeoutPassed is the problem of an execution that ran past its timeout.
func TimeoutPassed(timeout time.Duration) *jobsv1.Problem {
	return &jobsv1.Problem{
		Type:   ProblemTimeout,
		Title:  "Job timeout passed",
		Detail: fmt.Sprintf("the job did not finish within its timeout of %v", timeout),
		Status: 504,
	}
}

// DeadlinePassed is the problem of a job still unfinished at its deadline.
func DeadlinePassed(deadline time.Time) *jobsv1.Problem {
	return &jobsv1.Problem{
		Type:   ProblemDeadline,
		Title:  "Job deadline passed",
		Detail: fmt.Sprintf("the job did not finish by its deadline %s", deadline.UTC().Format(time.RFC3339)),
		Status: 504,
	}
}

// Restart puts a FAILED or CANCELED job back to QUEUED, with the execution
// of its next attempt added at once, QUEUED (no service yet: Schedule fills
// it in on dispatch; a run that ends before ends it too). attempts is the
// number of executions the job had when the restart was asked for, so that
// each restart request is applied once: a record with more was restarted
// by it already, AlreadyApplied while that run goes on and Ignored once it
// has ended, even with no dispatch (no service, its deadline, a cancel
// while it waited): its restart message, retried meanwhile, never brings
// back a job that ended. The next request, asked for after that end, names
// the new count. A COMPLETED job, or one still running, cannot be
// restarted (Ignored); a record with attempts executions that has not
// ended was restarted by a processor that added no execution
// (AlreadyApplied).
func Restart(rec *jobsv1.Job, attempts int32, now time.Time) Outcome {
	n := int32(len(rec.GetExecutions()))
	switch st := rec.GetStatus(); {
	case n > attempts || (n == attempts && !jobstate.IsTerminal(st)):
		if jobstate.IsTerminal(st) {
			return Ignored
		}
		return AlreadyApplied
	case n < attempts:
		return Ignored
	case st != jobsv1.JobStatus_JOB_STATUS_FAILED && st != jobsv1.JobStatus_JOB_STATUS_CANCELED:
		return Ignored
	}
	rec.Executions = append(rec.Executions, &jobsv1.Execution{Attempt: n + 1, Status: jobsv1.JobStatus_JOB_STATUS_QUEUED, Restarted: true})
	rec.Status = jobsv1.JobStatus_JOB_STATUS_QUEUED
	rec.Progress = 0
	rec.Error = nil
	rec.Output = nil
	rec.EndTime = nil
	rec.VerifiedQuantity = 0
	rec.StatusMessage = "restarted"
	rec.UpdateTime = timestamppb.New(now)
	return Applied
}

// RestartedAfter reports whether rec was restarted after the attempts a
// cancel names: an execution past them starts a run of its own. A cancel
// naming attempts (the executions the mediator knew when it was asked for)
// was then asked for before that restart, and the run it meant has ended
// (only an ended job is restarted): redelivered late, it must not end the
// new run. Executions past it added by retries (a lost worker) are the same
// run, still the cancel's to end. An unknown count of 0, a cancel from an
// older mediator, names no attempt; a known 0 is a cancel asked before any
// dispatch.
func RestartedAfter(rec *jobsv1.Job, ev *eventsv1.JobCancelRequested) bool {
	attempts := ev.GetAttempts()
	if attempts <= 0 && !ev.GetAttemptsKnown() {
		return false
	}
	for _, ex := range rec.GetExecutions() {
		if ex.GetAttempt() > attempts && ex.GetRestarted() {
			return true
		}
	}
	return false
}

// Beat notes a heartbeat of rec's current, running attempt: the record's
// update_time becomes the last sign of life the liveness check reads. To
// keep writes rare it moves only when it is at least minGap old (Applied);
// otherwise, or for any other update, nothing changes (AlreadyApplied for a
// heartbeat of the current attempt, else Ignored).
func Beat(rec *jobsv1.Job, u *eventsv1.ExecutionUpdate, now time.Time, minGap time.Duration) Outcome {
	cur := jobstate.Current(rec)
	if cur == nil || u.GetAttempt() != cur.GetAttempt() || u.GetStatus() != jobsv1.JobStatus_JOB_STATUS_RUNNING ||
		rec.GetStatus() != jobsv1.JobStatus_JOB_STATUS_RUNNING || cur.GetStatus() != jobsv1.JobStatus_JOB_STATUS_RUNNING {
		return Ignored
	}
	if rec.GetUpdateTime() != nil && now.Sub(rec.GetUpdateTime().AsTime()) < minGap {
		return AlreadyApplied
	}
	rec.UpdateTime = timestamppb.New(now)
	return Applied
}
