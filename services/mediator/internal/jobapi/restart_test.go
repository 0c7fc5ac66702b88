package jobapi

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/statusconsumer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// A job whose deadline has passed is not restarted: its new run could only
// fail at once (job-deadline-passed). The client is told why, naming the
// deadline, and the job stays as it was.
func TestRestartPastDeadlineRefused(t *testing.T) {
	f := setup(t)
	restarts := f.env.WatchEvents(t, bus.SubjectJobRestart)
	in := ameJob()
	deadline := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	in.Deadline = timestamppb.New(deadline)
	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: in})
	if err != nil {
		t.Fatal(err)
	}
	moveOn(t, f, job.GetId(), jobsv1.JobStatus_JOB_STATUS_FAILED)
	later(f, 2*time.Hour)

	_, err = f.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: job.GetId()})
	wantProblem(t, err, codes.FailedPrecondition, "")
	p := problem.FromStatus(status.Convert(problem.ToStatus(context.Background(), err)))
	if p.GetType() != problem.TypePrefix+"job-deadline-passed" || p.GetStatus() != 409 || !strings.Contains(p.GetDetail(), deadline.Format(time.RFC3339)) {
		t.Fatalf("problem = %v, want job-deadline-passed (409) naming the deadline %s", p, deadline.Format(time.RFC3339))
	}
	if got, _, err := f.store.Get(context.Background(), job.GetId()); err != nil || got.GetStatus() != jobsv1.JobStatus_JOB_STATUS_FAILED {
		t.Fatalf("job after the refused restart = %v, %v; want still FAILED", got, err)
	}
	restarts.None(200 * time.Millisecond)

	// Before its deadline the same job restarts.
	later(f, 0)
	if _, err := f.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: job.GetId()}); err != nil {
		t.Fatalf("restart before the deadline: %v", err)
	}
}

// Every restart request reaches the processor, even when the run an
// earlier one started ended without a new execution (no service, its
// deadline, a cancel while queued), so that the job's attempts, which named
// the announcement, are what they were: the stream would drop the second as
// a duplicate, and the job would stay QUEUED with nothing running. Each
// announcement is named by the record's revision the restart was applied
// on: one request, one id, however often its publish is tried.
func TestRestartAgainAfterRunWithoutExecution(t *testing.T) {
	f := setup(t)
	restarts := f.env.WatchEvents(t, bus.SubjectJobRestart)
	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	id := job.GetId()
	// The processor's record as such a run leaves it: no execution (a
	// processor before each restart added one).
	processorRecord(t, f, id, 0)
	var ids, want []string
	for i := range 2 {
		// No service took it: FAILED with no execution, each time.
		moveOn(t, f, id, jobsv1.JobStatus_JOB_STATUS_FAILED)
		_, rev, err := f.store.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id}); err != nil {
			t.Fatalf("restart %d: %v", i+1, err)
		}
		ev := &eventsv1.JobRestartRequested{}
		ids = append(ids, restarts.Next(ev))
		if ev.GetJobId() != id || ev.GetAttempts() != 0 {
			t.Fatalf("restart %d announced %v", i+1, ev)
		}
		want = append(want, fmt.Sprintf("restart-%s-0-rev%d", id, rev))
	}
	if !slices.Equal(ids, want) {
		t.Fatalf("restart msg ids %q, want %q", ids, want)
	}
}

// A cancel asked after a restart reaches the processor, although the same
// job was canceled before: each cancel request is published under an id of
// its own (the record's revision it was decided on), so the events stream
// does not drop the second as a duplicate of the first, which would answer
// 200 and leave the restarted job running. A request repeated while the
// record has not changed is stored once.
func TestCancelAfterRestartReachesProcessor(t *testing.T) {
	f := setup(t)
	cancels := f.env.WatchEvents(t, bus.SubjectJobCancel)
	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	id := job.GetId()
	cancel := func() string {
		t.Helper()
		if _, err := f.srv.CancelJob(as("acme"), &jobsv1.CancelJobRequest{Id: id}); err != nil {
			t.Fatalf("cancel: %v", err)
		}
		ev := &eventsv1.JobCancelRequested{}
		msgID := cancels.Next(ev)
		if ev.GetJobId() != id || ev.GetTenant() != "acme" {
			t.Fatalf("cancel announced %v", ev)
		}
		return msgID
	}

	moveOn(t, f, id, jobsv1.JobStatus_JOB_STATUS_RUNNING)
	first := cancel()
	// Asked again before anything changed: the same request.
	if _, err := f.srv.CancelJob(as("acme"), &jobsv1.CancelJobRequest{Id: id}); err != nil {
		t.Fatalf("cancel again: %v", err)
	}
	cancels.None(200 * time.Millisecond)

	moveOn(t, f, id, jobsv1.JobStatus_JOB_STATUS_CANCELED)
	if _, err := f.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id}); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if second := cancel(); second == first {
		t.Fatalf("both cancels announced as %q", first)
	}
}

// A cancel names the latest attempt the job's record knows: after a
// restart, the restart's, so that a processor which has not applied the
// restart yet waits for it instead of dropping the cancel (the restart
// would then run the job the client was told is canceled). Before any
// attempt it names none, as cancels always did.
func TestCancelNamesTheRestartsAttempt(t *testing.T) {
	f := setup(t)
	cancels := f.env.WatchEvents(t, bus.SubjectJobCancel)
	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	id := job.GetId()
	cancel := func() *eventsv1.JobCancelRequested {
		t.Helper()
		if _, err := f.srv.CancelJob(as("acme"), &jobsv1.CancelJobRequest{Id: id}); err != nil {
			t.Fatalf("cancel: %v", err)
		}
		ev := &eventsv1.JobCancelRequested{}
		cancels.Next(ev)
		return ev
	}
	// It says it names none, so that a late redelivery of it cannot end a
	// restarted run (0 alone is an older mediator's "not set").
	if ev := cancel(); ev.GetAttempts() != 0 || !ev.GetAttemptsKnown() {
		t.Fatalf("cancel of a job never dispatched names attempt %d (known %v), want 0 known", ev.GetAttempts(), ev.GetAttemptsKnown())
	}

	// Its first run failed on attempt 2 (attempt 1 lost, retried).
	processorRecord(t, f, id, 2)
	moveOn(t, f, id, jobsv1.JobStatus_JOB_STATUS_FAILED)
	if _, err := f.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id}); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if ev := cancel(); ev.GetAttempts() != 3 || !ev.GetAttemptsKnown() || ev.GetJobId() != id || ev.GetTenant() != "acme" {
		t.Fatalf("cancel after the restart = %v, want attempts 3 (the restart's)", ev)
	}
}

// A job the processor has dispatched but not yet announced (it holds a
// job's SCHEDULED back for a while) has no attempt in the mediator's
// record: a cancel then names the processor's, so that, redelivered late
// after a restart, it is still known for the cancel of the run before.
func TestCancelBeforeTheDispatchIsAnnouncedNamesTheProcessorsAttempt(t *testing.T) {
	f := setup(t)
	cancels := f.env.WatchEvents(t, bus.SubjectJobCancel)
	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	processorRecord(t, f, job.GetId(), 1)
	if _, err := f.srv.CancelJob(as("acme"), &jobsv1.CancelJobRequest{Id: job.GetId()}); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	ev := &eventsv1.JobCancelRequested{}
	cancels.Next(ev)
	if ev.GetAttempts() != 1 {
		t.Fatalf("cancel of a job NEW to the mediator, dispatched as attempt 1, names attempt %d", ev.GetAttempts())
	}
}

// processorRecord stores the processor's record of job id with n
// executions, all ended FAILED, as a processor would have (the mediator
// counts them for a restart).
func processorRecord(t *testing.T, f *fixture, id string, n int32) {
	t.Helper()
	ctx := context.Background()
	kv, err := f.env.JS.KeyValue(ctx, bus.BucketExecutions)
	if err != nil {
		t.Fatal(err)
	}
	rec := &jobsv1.Job{Id: id, Tenant: "acme", Status: jobsv1.JobStatus_JOB_STATUS_FAILED}
	for a := range n {
		rec.Executions = append(rec.Executions, &jobsv1.Execution{Attempt: a + 1, Service: "svc", Status: jobsv1.JobStatus_JOB_STATUS_FAILED})
	}
	data, err := proto.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, id, data); err != nil {
		t.Fatal(err)
	}
}

// statusEvent is the processor's JobStatusChanged of job id: status, and
// the execution of attempt if it names one.
func statusEvent(id string, status jobsv1.JobStatus, attempt int32) *eventsv1.JobStatusChanged {
	ev := &eventsv1.JobStatusChanged{JobId: id, Status: status}
	if attempt > 0 {
		ev.Execution = &jobsv1.Execution{Attempt: attempt, Service: "svc", Status: status}
	}
	return ev
}

// The news of a run before a restart, late or redelivered, never moves the
// restarted job: not its end (FAILED or CANCELED of the same attempt the
// mediator last heard of, or naming none when the run never dispatched one),
// nor its progress. Every event of the restarted run applies.
func TestRestartedJobIgnoresEarlierRunsNews(t *testing.T) {
	const (
		queued    = jobsv1.JobStatus_JOB_STATUS_QUEUED
		scheduled = jobsv1.JobStatus_JOB_STATUS_SCHEDULED
		running   = jobsv1.JobStatus_JOB_STATUS_RUNNING
		failed    = jobsv1.JobStatus_JOB_STATUS_FAILED
		canceled  = jobsv1.JobStatus_JOB_STATUS_CANCELED
	)
	for _, tt := range []struct {
		name string
		// run is the events of the run before the restart; it ended.
		run []*eventsv1.JobStatusChanged
		// attempts is the processor's count of executions after it.
		attempts int32
		// late is that run's news arriving after the restart.
		late []*eventsv1.JobStatusChanged
		// next is the restarted run's events, and end the status they
		// leave.
		next []*eventsv1.JobStatusChanged
		end  jobsv1.JobStatus
	}{{
		name:     "failed on a worker",
		run:      []*eventsv1.JobStatusChanged{statusEvent("", scheduled, 1), statusEvent("", running, 1), statusEvent("", failed, 1)},
		attempts: 1,
		late:     []*eventsv1.JobStatusChanged{statusEvent("", failed, 1), statusEvent("", running, 1), statusEvent("", canceled, 1), statusEvent("", failed, 0)},
		next:     []*eventsv1.JobStatusChanged{statusEvent("", scheduled, 2), statusEvent("", running, 2), statusEvent("", canceled, 2)},
		end:      canceled,
	}, {
		name:     "canceled while running",
		run:      []*eventsv1.JobStatusChanged{statusEvent("", scheduled, 1), statusEvent("", running, 1), statusEvent("", canceled, 1)},
		attempts: 1,
		late:     []*eventsv1.JobStatusChanged{statusEvent("", canceled, 1)},
		// No service this time: QUEUED (naming no attempt), then FAILED
		// with the restart's execution ended undispatched.
		next: []*eventsv1.JobStatusChanged{statusEvent("", queued, 0), statusEvent("", failed, 2)},
		end:  failed,
	}, {
		name:     "never dispatched",
		run:      []*eventsv1.JobStatusChanged{statusEvent("", queued, 0), statusEvent("", failed, 0)},
		attempts: 0,
		late:     []*eventsv1.JobStatusChanged{statusEvent("", failed, 0), statusEvent("", canceled, 0)},
		next:     []*eventsv1.JobStatusChanged{statusEvent("", scheduled, 1), statusEvent("", running, 1), statusEvent("", failed, 1)},
		end:      failed,
	}} {
		t.Run(tt.name, func(t *testing.T) {
			f := setup(t)
			ctx := context.Background()
			consumer := statusconsumer.New(f.store)
			job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
			if err != nil {
				t.Fatal(err)
			}
			id := job.GetId()
			apply := func(evs []*eventsv1.JobStatusChanged) {
				t.Helper()
				for _, ev := range evs {
					ev.JobId = id
					if err := consumer.Apply(ctx, ev); err != nil {
						t.Fatal(err)
					}
				}
			}
			apply(tt.run)
			processorRecord(t, f, id, tt.attempts)
			if _, err := f.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id}); err != nil {
				t.Fatalf("restart: %v", err)
			}

			for _, ev := range tt.late {
				apply([]*eventsv1.JobStatusChanged{ev})
				if got, _, err := f.store.Get(ctx, id); err != nil || got.GetStatus() != queued {
					t.Fatalf("restarted job after the earlier run's late %s (attempt %d): %v, %v; want still QUEUED",
						ev.GetStatus(), ev.GetExecution().GetAttempt(), got.GetStatus(), err)
				}
			}
			for _, ev := range tt.next {
				apply([]*eventsv1.JobStatusChanged{ev})
				if got, _, err := f.store.Get(ctx, id); err != nil || got.GetStatus() != ev.GetStatus() {
					t.Fatalf("restarted run's %s (attempt %d) left the job %v, %v", ev.GetStatus(), ev.GetExecution().GetAttempt(), got.GetStatus(), err)
				}
			}
			got, _, err := f.store.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			restarted := tt.attempts + 1
			if cur := got.GetExecutions()[len(got.GetExecutions())-1]; got.GetStatus() != tt.end || cur.GetAttempt() != restarted || cur.GetStatus() != tt.end {
				t.Fatalf("restarted job ended %v, executions %v; want %v with attempt %d %v", got.GetStatus(), got.GetExecutions(), tt.end, restarted, tt.end)
			}
		})
	}
}
