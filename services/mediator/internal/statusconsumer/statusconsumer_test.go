package statusconsumer

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"google.golang.org/protobuf/proto"
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
	statusCanceled  = jobsv1.JobStatus_JOB_STATUS_CANCELED
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

// TestApplyRequeue: the processor announces a job waiting for the retry
// of an attempt that lost its worker as QUEUED with that attempt's ended
// execution. The job shows QUEUED and the attempt FAILED at once, not
// RUNNING until the retry runs; the lost attempt's late news does not
// bring it back; the retry then runs.
func TestApplyRequeue(t *testing.T) {
	now := time.Now()
	job := &jobsv1.Job{Id: "j", Status: statusNew}
	requeued := &eventsv1.JobStatusChanged{Status: statusQueued, StatusMessage: "worker lost (no heartbeat); retrying, attempt 2 of 3",
		Execution: &jobsv1.Execution{Attempt: 1, Status: statusFailed, Service: "svc", Error: &jobsv1.Problem{Type: "urn:medius:problem:worker-lost"}}}
	for _, step := range []struct {
		name    string
		ev      *eventsv1.JobStatusChanged
		applies bool
		status  jobsv1.JobStatus
	}{
		{"scheduled", ev(statusScheduled, 1, 0), true, statusScheduled},
		{"running", ev(statusRunning, 1, 30), true, statusRunning},
		{"worker lost: requeued", requeued, true, statusQueued},
		{"lost attempt's progress, late", ev(statusRunning, 1, 40), false, statusQueued},
		{"requeue again (redelivery)", requeued, true, statusQueued},
		{"a restart's QUEUED, late", ev(statusQueued, 0, 0), false, statusQueued},
		{"retry scheduled", ev(statusScheduled, 2, 0), true, statusScheduled},
		{"requeue, late", requeued, false, statusScheduled},
		{"retry completed", ev(statusCompleted, 2, 100), true, statusCompleted},
	} {
		if got := apply(job, step.ev, now); got != step.applies {
			t.Fatalf("%s: applied = %v, want %v", step.name, got, step.applies)
		}
		if job.Status != step.status {
			t.Fatalf("%s: job %s, want %s", step.name, job.Status, step.status)
		}
		if step.name == "worker lost: requeued" {
			if len(job.Executions) != 1 || job.Executions[0].GetStatus() != statusFailed || job.Progress != 0 ||
				job.StatusMessage != requeued.StatusMessage {
				t.Fatalf("requeued job = %v, want attempt 1 FAILED, progress 0 and the retry's message", job)
			}
		}
	}
	if len(job.Executions) != 2 || job.Executions[0].GetStatus() != statusFailed || job.Executions[1].GetStatus() != statusCompleted {
		t.Fatalf("executions = %v, want attempt 1 FAILED, attempt 2 COMPLETED", job.Executions)
	}
}

// TestApplyReroute: a job moved off a service with no live instance left is
// announced SCHEDULED on its next attempt, carrying the attempt it ended
// (FAILED service-unavailable), which no event of its own names: the job
// record shows that attempt ended, not SCHEDULED for good.
func TestApplyReroute(t *testing.T) {
	now := time.Now()
	moved := &jobsv1.Execution{Attempt: 1, Service: "gone", Status: statusFailed, EndTime: timestamppb.New(now),
		Error: &jobsv1.Problem{Type: "urn:medius:problem:service-unavailable"}}
	rerouted := func(status jobsv1.JobStatus, progress int32) *eventsv1.JobStatusChanged {
		e := ev(status, 2, progress)
		e.PreviousExecution = moved
		return e
	}
	scheduled := func() *jobsv1.Job {
		job := &jobsv1.Job{Id: "j", Status: statusNew}
		first := ev(statusScheduled, 1, 0)
		first.Execution.Service = "gone"
		if !apply(job, first, now) {
			t.Fatal("first SCHEDULED not applied")
		}
		return job
	}
	endsMoved := func(name string, job *jobsv1.Job, want jobsv1.JobStatus) {
		t.Helper()
		if len(job.Executions) != 2 || !proto.Equal(job.Executions[0], moved) || job.Executions[1].GetStatus() != want {
			t.Fatalf("%s: executions %v, want attempt 1 FAILED service-unavailable, attempt 2 %s", name, job.Executions, want)
		}
	}

	job := scheduled()
	if !apply(job, rerouted(statusScheduled, 0), now) || job.Status != statusScheduled {
		t.Fatalf("rerouted SCHEDULED not applied: %v", job)
	}
	endsMoved("rerouted", job, statusScheduled)
	// The moved attempt's own SCHEDULED, redelivered late, does not bring
	// it back.
	late := ev(statusScheduled, 1, 0)
	late.Execution.Service = "gone"
	if apply(job, late, now) {
		t.Fatal("the moved attempt's late SCHEDULED applied")
	}
	// An execution before it not ended is not taken (an execution never
	// goes back from its end).
	unended := rerouted(statusRunning, 10)
	unended.PreviousExecution = &jobsv1.Execution{Attempt: 1, Service: "gone", Status: statusScheduled}
	if !apply(job, unended, now) {
		t.Fatal("RUNNING of attempt 2 not applied")
	}
	endsMoved("after a previous execution not ended", job, statusRunning)

	// The rerouted SCHEDULED never applied here (overtaken by the RUNNING):
	// the new attempt's later news ends the moved one all the same.
	job = scheduled()
	if !apply(job, rerouted(statusRunning, 10), now) || job.Status != statusRunning {
		t.Fatalf("RUNNING of the rerouted attempt not applied: %v", job)
	}
	endsMoved("running, its SCHEDULED missed", job, statusRunning)

	// A restarted job: the record has the run's attempt 1 ended (told
	// before the processor took its worker's start) and the restart's
	// attempt 2 QUEUED. Attempt 2's SCHEDULED carries attempt 1 as the
	// processor has it, for good: its end unchanged, its start added.
	ended := &jobsv1.Execution{Attempt: 1, Service: "svc", Status: jobsv1.JobStatus_JOB_STATUS_CANCELED, EndTime: timestamppb.New(now)}
	job = &jobsv1.Job{Id: "j", Status: statusQueued, Executions: []*jobsv1.Execution{ended,
		{Attempt: 2, Status: statusQueued, Restarted: true}}}
	final := proto.CloneOf(ended)
	final.StartTime, final.InstanceId = timestamppb.New(now.Add(-time.Second)), "i1"
	restartScheduled := ev(statusScheduled, 2, 0)
	restartScheduled.PreviousExecution = final
	if !apply(job, restartScheduled, now) || len(job.Executions) != 2 || !proto.Equal(job.Executions[0], final) ||
		job.Executions[1].GetStatus() != statusScheduled {
		t.Fatalf("restarted job scheduled: executions %v, want attempt 1 with its start, attempt 2 SCHEDULED", job.Executions)
	}
}

// An end naming no attempt is the end of a run that never dispatched one:
// it ends a job that has no attempt (no service took it), never one that
// has, i.e. a job restarted after it, whose record holds the restart's
// attempt; a QUEUED naming none (a requeue, a restarted run waiting for a
// service) still applies.
func TestApplyEndNamingNoAttempt(t *testing.T) {
	now := time.Now()
	restarted := func() *jobsv1.Job {
		return &jobsv1.Job{Id: "j", Status: statusQueued, Executions: []*jobsv1.Execution{{Attempt: 1, Status: statusQueued}}}
	}
	for _, tt := range []struct {
		name    string
		job     *jobsv1.Job
		ev      *eventsv1.JobStatusChanged
		applies bool
	}{
		{"no service, never ran", &jobsv1.Job{Id: "j", Status: statusQueued}, ev(statusFailed, 0, 0), true},
		{"canceled, never ran", &jobsv1.Job{Id: "j", Status: statusNew}, ev(jobsv1.JobStatus_JOB_STATUS_CANCELED, 0, 0), true},
		{"first run's no service after a restart", restarted(), ev(statusFailed, 0, 0), false},
		{"first run's cancel after a restart", restarted(), ev(jobsv1.JobStatus_JOB_STATUS_CANCELED, 0, 0), false},
		{"restarted run waiting for a service", restarted(), ev(statusQueued, 0, 0), true},
		{"restarted run ended undispatched", restarted(), ev(statusFailed, 1, 0), true},
	} {
		if got := apply(tt.job, tt.ev, now); got != tt.applies {
			t.Errorf("%s: applied = %v, want %v", tt.name, got, tt.applies)
		}
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

// staleCache is a job that this replica ("here") last saw RUNNING at 40 and
// that another replica ("elsewhere") has moved on since.
type staleCache struct {
	here, elsewhere *jobstore.Store
	id              string
}

func setupStaleCache(t *testing.T, moveOn func(*jobsv1.Job)) staleCache {
	t.Helper()
	env := testsupport.Start(t)
	ctx := context.Background()
	s := staleCache{here: jobstore.New(env.Jobs), elsewhere: jobstore.New(env.Jobs)}
	s.id, _ = jobstore.NewID()
	if _, err := s.here.Create(ctx, &jobsv1.Job{Id: s.id, Tenant: "acme", Status: statusNew}); err != nil {
		t.Fatal(err)
	}
	for _, e := range []*eventsv1.JobStatusChanged{ev(statusScheduled, 1, 0), ev(statusRunning, 1, 40)} {
		e.JobId = s.id
		if err := New(s.here).Apply(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	job, rev, err := s.elsewhere.Get(ctx, s.id)
	if err != nil {
		t.Fatal(err)
	}
	moveOn(job)
	if _, err := s.elsewhere.Update(ctx, job, rev); err != nil {
		t.Fatal(err)
	}
	return s
}

// hooks records what the consumer's hooks were told.
type hooks struct {
	changed, terminal []*jobsv1.Job
}

func (h *hooks) consumer(store *jobstore.Store) *Consumer {
	c := New(store)
	c.OnChange(func(_ context.Context, job *jobsv1.Job) error {
		h.changed = append(h.changed, proto.CloneOf(job))
		return nil
	})
	c.OnTerminal(func(_ context.Context, job *jobsv1.Job) error {
		h.terminal = append(h.terminal, proto.CloneOf(job))
		return nil
	})
	return c
}

// An event that applies to what this replica remembers, whose record moved
// on elsewhere, is applied to the stored record.
func TestApplyToRecordChangedElsewhere(t *testing.T) {
	s := setupStaleCache(t, func(job *jobsv1.Job) { job.Progress = 60; job.StatusMessage = "elsewhere" })
	var h hooks
	e := ev(statusRunning, 1, 70)
	e.JobId, e.StatusMessage = s.id, "seventy"
	if err := h.consumer(s.here).Apply(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	job, _, err := s.elsewhere.Get(context.Background(), s.id)
	if err != nil || job.GetProgress() != 70 || job.GetStatusMessage() != "seventy" {
		t.Fatalf("record %v %v, want RUNNING 70", job, err)
	}
	if len(h.changed) != 1 || h.changed[0].GetProgress() != 70 {
		t.Fatalf("change hook told %v", h.changed)
	}
}

// An event that this replica's memory of the job says to ignore is checked
// against the stored record: the job failed elsewhere, so the late event
// finds it terminal and the terminal hooks (quota release, usage) run.
func TestIgnoredOnStaleCacheIsRechecked(t *testing.T) {
	s := setupStaleCache(t, func(job *jobsv1.Job) {
		job.Status, job.Error = statusFailed, &jobsv1.Problem{Type: "urn:medius:problem:worker-lost"}
	})
	var h hooks
	late := ev(statusScheduled, 1, 0) // a redelivery: old news to what this replica knows
	late.JobId = s.id
	if err := h.consumer(s.here).Apply(context.Background(), late); err != nil {
		t.Fatal(err)
	}
	if len(h.changed) != 0 || len(h.terminal) != 1 || h.terminal[0].GetStatus() != statusFailed {
		t.Fatalf("hooks told changes %v, terminal %v; want the FAILED job's terminal hooks only", h.changed, h.terminal)
	}

	// The job was restarted elsewhere (FAILED -> QUEUED by RestartJob): the
	// processor's QUEUED is ignored by a replica still remembering
	// RUNNING, but applies to the stored record.
	s = setupStaleCache(t, func(job *jobsv1.Job) { job.Status, job.Progress, job.StatusMessage = statusQueued, 0, "restarted" })
	h = hooks{}
	queued := ev(statusQueued, 0, 0)
	queued.JobId, queued.StatusMessage = s.id, "waiting for a worker"
	if err := h.consumer(s.here).Apply(context.Background(), queued); err != nil {
		t.Fatal(err)
	}
	job, _, err := s.elsewhere.Get(context.Background(), s.id)
	if err != nil || job.GetStatus() != statusQueued || job.GetStatusMessage() != "waiting for a worker" {
		t.Fatalf("record %v %v, want the QUEUED event applied", job, err)
	}
}

// Events applied together leave the record and tell the change hooks what
// applying them one by one does, with one write.
func TestApplyTogether(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	store := jobstore.New(env.Jobs)
	now := time.Now()
	out, _ := structpb.NewStruct(map[string]any{"duration": 3.0})
	events := func(id string) []*eventsv1.JobStatusChanged {
		done := ev(statusCompleted, 2, 100)
		done.Output, done.Time = &jobsv1.JobOutput{Data: out}, timestamppb.New(now)
		evs := []*eventsv1.JobStatusChanged{
			ev(statusQueued, 0, 0), ev(statusScheduled, 1, 0), ev(statusRunning, 1, 30),
			ev(statusScheduled, 1, 0),                           // a redelivery: ignored
			ev(statusScheduled, 2, 0), ev(statusRunning, 2, 10), // a retry on another worker
			done,
		}
		for _, e := range evs {
			e.JobId = id
		}
		return evs
	}
	run := func(together bool) (*jobsv1.Job, uint64, hooks) {
		id, _ := jobstore.NewID()
		created, err := store.Create(ctx, &jobsv1.Job{Id: id, Tenant: "acme", Status: statusNew})
		if err != nil {
			t.Fatal(err)
		}
		var h hooks
		c := h.consumer(store)
		c.now = func() time.Time { return now }
		if together {
			err = c.Apply(ctx, events(id)...)
		} else {
			for _, e := range events(id) {
				if err = c.Apply(ctx, e); err != nil {
					break
				}
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		job, rev, err := store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		job.Id = "" // compared across two jobs
		for _, j := range append(h.changed, h.terminal...) {
			j.Id = ""
		}
		return job, rev - created, h
	}
	oneByOne, _, want := run(false)
	together, writes, got := run(true)
	if !proto.Equal(together, oneByOne) {
		t.Fatalf("applied together: %v\none by one: %v", together, oneByOne)
	}
	if writes != 1 {
		t.Fatalf("%d writes, want 1", writes)
	}
	if len(got.changed) != len(want.changed) || len(got.terminal) != 1 {
		t.Fatalf("change hook told %d states (want %d), terminal %d", len(got.changed), len(want.changed), len(got.terminal))
	}
	for i := range want.changed {
		if !proto.Equal(got.changed[i], want.changed[i]) {
			t.Fatalf("state %d told: %v\nwant %v", i, got.changed[i], want.changed[i])
		}
	}
}

// The end of a job reaches the change hooks (notifications) even if the
// process dies between writing it and telling them, or they fail then: the
// failure hands the event back, and the redelivered event, which finds the
// job ended already, tells them again. Other late news of an ended job
// tells them nothing.
func TestEndToldAgainOnRedelivery(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	store := jobstore.New(env.Jobs)
	id, _ := jobstore.NewID()
	if _, err := store.Create(ctx, &jobsv1.Job{Id: id, Tenant: "acme", Status: statusNew}); err != nil {
		t.Fatal(err)
	}
	var told []jobsv1.JobStatus
	fail := true
	c := New(store)
	c.OnChange(func(_ context.Context, job *jobsv1.Job) error {
		told = append(told, job.GetStatus())
		if fail && job.GetStatus() == statusCompleted {
			return errors.New("notifications stream unavailable")
		}
		return nil
	})
	at := func(e *eventsv1.JobStatusChanged) *eventsv1.JobStatusChanged { e.JobId = id; return e }

	if err := c.Apply(ctx, at(ev(statusRunning, 1, 10))); err != nil {
		t.Fatal(err)
	}
	// The hook fails on the end: the event must come back.
	if err := c.Apply(ctx, at(ev(statusCompleted, 1, 100))); err == nil {
		t.Fatal("a failed notification of the end was not handed back for redelivery")
	}
	if job, _, err := store.Get(ctx, id); err != nil || job.GetStatus() != statusCompleted {
		t.Fatalf("record %v %v, want COMPLETED written", job, err)
	}
	// Its redelivery finds the job COMPLETED and tells the hook again.
	fail = false
	if err := c.Apply(ctx, at(ev(statusCompleted, 1, 100))); err != nil {
		t.Fatal(err)
	}
	// Late news of the ended job tells nothing.
	if err := c.Apply(ctx, at(ev(statusRunning, 1, 90))); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(ctx, at(ev(statusFailed, 1, 0))); err != nil {
		t.Fatal(err)
	}
	want := []jobsv1.JobStatus{statusRunning, statusCompleted, statusCompleted}
	if !slices.Equal(told, want) {
		t.Fatalf("change hook told %v, want %v", told, want)
	}
}

// A job canceled within its worker's running delay is announced CANCELED
// with its execution not started (the worker reports RUNNING only past the
// delay); the processor then learns from the worker's report when and
// where it started, and announces the end again with them. The ended
// record takes them, and nothing else: its state does not move, and the
// change hooks (notifications) are not told again, as no state changed.
// An end naming another status, or an execution that has its start, fills
// in nothing.
func TestEndedJobTakesTheStartAnnouncedAfter(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	store := jobstore.New(env.Jobs)
	id, _ := jobstore.NewID()
	if _, err := store.Create(ctx, &jobsv1.Job{Id: id, Tenant: "acme", Status: statusNew}); err != nil {
		t.Fatal(err)
	}
	var h hooks
	c := h.consumer(store)
	now := time.Now()
	end := func(start *timestamppb.Timestamp, instance string) *eventsv1.JobStatusChanged {
		return &eventsv1.JobStatusChanged{JobId: id, Status: statusCanceled, StatusMessage: "canceled by request", Time: timestamppb.New(now),
			Execution: &jobsv1.Execution{Attempt: 1, Service: "svc", Status: statusCanceled, InstanceId: instance,
				DispatchTime: timestamppb.New(now.Add(-time.Second)), StartTime: start, EndTime: timestamppb.New(now)}}
	}
	record := func() (*jobsv1.Job, uint64) {
		t.Helper()
		job, rev, err := store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return job, rev
	}
	for _, e := range []*eventsv1.JobStatusChanged{ev(statusScheduled, 1, 0), end(nil, "")} {
		e.JobId = id
		if err := c.Apply(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	canceled, _ := record()
	if ex := canceled.GetExecutions()[0]; canceled.GetStatus() != statusCanceled || ex.GetStartTime() != nil {
		t.Fatalf("record %v, want CANCELED, its execution not started", canceled)
	}
	told := len(h.changed)

	// Another end of the attempt (a late FAILED) gives no start.
	failed := end(timestamppb.New(now.Add(-900*time.Millisecond)), "w-2")
	failed.Status, failed.Execution.Status = statusFailed, statusFailed
	if err := c.Apply(ctx, failed); err != nil {
		t.Fatal(err)
	}
	if job, _ := record(); !proto.Equal(job, canceled) {
		t.Fatalf("an end of another status changed the record: %v", job)
	}

	start := timestamppb.New(now.Add(-800 * time.Millisecond))
	if err := c.Apply(ctx, end(start, "w-1")); err != nil {
		t.Fatal(err)
	}
	job, rev := record()
	ex := job.GetExecutions()[0]
	if !proto.Equal(ex.GetStartTime(), start) || ex.GetInstanceId() != "w-1" {
		t.Fatalf("execution %v, want started at %v on w-1", ex, start.AsTime())
	}
	ex.StartTime, ex.InstanceId = nil, ""
	if !proto.Equal(job, canceled) {
		t.Fatalf("record %v\nwant only the start and instance added to %v", job, canceled)
	}
	if len(h.changed) != told {
		t.Fatalf("change hooks told %v for the start", h.changed[told:])
	}

	// Again (a redelivery), or with another start: nothing more.
	for _, e := range []*eventsv1.JobStatusChanged{end(start, "w-1"), end(timestamppb.New(now.Add(-700*time.Millisecond)), "w-3")} {
		if err := c.Apply(ctx, e); err != nil {
			t.Fatal(err)
		}
		if again, againRev := record(); againRev != rev || !proto.Equal(again.GetExecutions()[0].GetStartTime(), start) {
			t.Fatalf("record rewritten (revision %d, was %d): %v", againRev, rev, again)
		}
	}
}
