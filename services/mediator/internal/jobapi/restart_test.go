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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
