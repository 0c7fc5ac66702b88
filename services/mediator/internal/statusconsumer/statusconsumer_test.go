package statusconsumer

import (
	"context"
	"errors"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	statusNew       = jobsv1.JobStatus_JOB_STATUS_NEW
	statusQueued    = jobsv1.JobStatus_JOB_STATUS_QUEUED
	statusScheduled = jobsv1.JobStatus_JOB_STATUS_SCHEDULED
	statusRunning   = jobsv1.JobStatus_JOB_STATUS_RUNNING
	statusCompleted = jobsv1.JobStatus_JOB_STATUS_COMPLETED
	statusFailed    = jobsv1.JobStatus_JOB_STATUS_FAILED
)

func ev(status jobsv1.JobStatus, attempt, progress int32) *eventsv1.JobStatusChanged {
	e := &eventsv1.JobStatusChanged{Status: status, Progress: progress}
	if attempt > 0 {
		e.Execution = &jobsv1.Execution{Attempt: attempt, Status: status, Progress: progress, Service: "svc"}
	}
	return e
}

// TestApply walks a job through one event sequence, checking after each
// event whether it applied.
func TestApply(t *testing.T) {
	job := &jobsv1.Job{Id: "j", Status: statusNew}
	now := time.Now()
	out, _ := structpb.NewStruct(map[string]any{"duration": 12.5})
	completed := ev(statusCompleted, 2, 100)
	completed.Output = &jobsv1.JobOutput{Data: out}
	completed.VerifiedQuantity = 12.5
	completed.Time = timestamppb.New(now)
	failedAttempt1 := ev(statusFailed, 1, 0)
	failedAttempt1.Error = &jobsv1.Problem{Type: "urn:medius:problem:worker-lost"}

	for _, step := range []struct {
		name    string
		ev      *eventsv1.JobStatusChanged
		applies bool
		status  jobsv1.JobStatus
		prog    int32
	}{
		{"queued", ev(statusQueued, 1, 0), true, statusQueued, 0},
		{"scheduled", ev(statusScheduled, 1, 0), true, statusScheduled, 0},
		{"running", ev(statusRunning, 1, 10), true, statusRunning, 10},
		{"progress", ev(statusRunning, 1, 50), true, statusRunning, 50},
		{"progress going back (redelivery)", ev(statusRunning, 1, 30), false, statusRunning, 50},
		{"late scheduled", ev(statusScheduled, 1, 0), false, statusRunning, 50},
		{"no status", ev(jobsv1.JobStatus_JOB_STATUS_UNSPECIFIED, 1, 60), false, statusRunning, 50},
		{"retry: attempt 2 requeued", ev(statusQueued, 2, 0), true, statusQueued, 0},
		{"attempt 1 news after the retry", failedAttempt1, false, statusQueued, 0},
		{"attempt 2 running", ev(statusRunning, 2, 40), true, statusRunning, 40},
		{"completed", completed, true, statusCompleted, 100},
		{"duplicate completed", completed, false, statusCompleted, 100},
		{"late running", ev(statusRunning, 2, 90), false, statusCompleted, 100},
		{"late failed", ev(statusFailed, 2, 0), false, statusCompleted, 100},
		{"new attempt after terminal", ev(statusQueued, 3, 0), false, statusCompleted, 100},
	} {
		if got := apply(job, step.ev, now); got != step.applies {
			t.Fatalf("%s: applied = %v, want %v", step.name, got, step.applies)
		}
		if job.Status != step.status || job.Progress != step.prog {
			t.Fatalf("%s: job %s/%d, want %s/%d", step.name, job.Status, job.Progress, step.status, step.prog)
		}
	}
	if len(job.Executions) != 2 || job.Executions[0].Attempt != 1 || job.Executions[1].Attempt != 2 ||
		job.Executions[1].Status != statusCompleted {
		t.Fatalf("executions = %v", job.Executions)
	}
	if job.Output.GetData().GetFields()["duration"].GetNumberValue() != 12.5 || job.VerifiedQuantity != 12.5 ||
		job.EndTime == nil || job.UpdateTime == nil {
		t.Fatalf("completed job = %v", job)
	}
}

// TestConsume runs the durable consumer on real JetStream: events reach the
// record, late and duplicate ones after the end do not move it, and an event
// for an unknown job is eventually dropped rather than blocking the others.
func TestConsume(t *testing.T) {
	env := testsupport.Start(t)
	store := jobstore.New(env.Jobs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(store).Run(ctx, env.JS) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("consumer: %v", err)
		}
	})

	id, _ := jobstore.NewID()
	if _, err := store.Create(context.Background(), &jobsv1.Job{Id: id, Tenant: "acme", Status: statusNew}); err != nil {
		t.Fatal(err)
	}
	publish := func(e *eventsv1.JobStatusChanged, msgID string) {
		t.Helper()
		if err := bus.Publish(context.Background(), env.JS, bus.SubjectJobStatus(e.JobId), msgID, e); err != nil {
			t.Fatal(err)
		}
	}
	waitFor := func(what string, cond func(*jobsv1.Job) bool) {
		t.Helper()
		testsupport.Eventually(t, 10*time.Second, what, func() bool {
			j, _, err := store.Get(context.Background(), id)
			return err == nil && cond(j)
		})
	}

	unknown, _ := jobstore.NewID()
	ghost := ev(statusRunning, 1, 0)
	ghost.JobId = unknown
	publish(ghost, "status-ghost")

	for _, e := range []*eventsv1.JobStatusChanged{ev(statusQueued, 1, 0), ev(statusRunning, 1, 20)} {
		e.JobId = id
		publish(e, "")
	}
	waitFor("running 20", func(j *jobsv1.Job) bool { return j.Status == statusRunning && j.Progress == 20 })

	fin := ev(statusFailed, 1, 20)
	fin.JobId, fin.Error = id, &jobsv1.Problem{Type: "urn:medius:problem:bad-input", Detail: "no audio"}
	publish(fin, "status-fin")
	waitFor("failed", func(j *jobsv1.Job) bool { return j.Status == statusFailed && j.Error.GetDetail() == "no audio" })

	// Late news after the end; the marker event after them is to a second
	// job, so once it is applied the late ones have been handled too.
	late := ev(statusCompleted, 1, 100)
	late.JobId = id
	publish(late, "status-late")
	again := ev(statusRunning, 1, 90)
	again.JobId = id
	publish(again, "status-again")
	marker, _ := jobstore.NewID()
	if _, err := store.Create(context.Background(), &jobsv1.Job{Id: marker, Status: statusNew}); err != nil {
		t.Fatal(err)
	}
	m := ev(statusQueued, 1, 0)
	m.JobId = marker
	publish(m, "status-marker")
	testsupport.Eventually(t, 10*time.Second, "marker applied", func() bool {
		j, _, err := store.Get(context.Background(), marker)
		return err == nil && j.Status == statusQueued
	})
	j, _, err := store.Get(context.Background(), id)
	if err != nil || j.Status != statusFailed || j.Progress != 20 {
		t.Fatalf("terminal job moved: %v %v", j, err)
	}

	// The unknown job's event is terminated after a few deliveries.
	cons, err := env.JS.Consumer(context.Background(), bus.StreamEvents, Durable)
	if err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 20*time.Second, "unknown job event dropped", func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0 && info.NumRedelivered == 0
	})
	if err := New(store).Apply(context.Background(), ghost); !errors.Is(err, jobstore.ErrNotFound) {
		t.Fatalf("Apply unknown = %v", err)
	}
}
