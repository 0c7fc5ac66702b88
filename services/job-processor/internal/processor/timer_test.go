package processor_test

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/services/job-processor/internal/processor"
	"github.com/medius-platform/medius/services/job-processor/internal/record"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// renewEvery makes timers renew once they are older than age.
func renewEvery(age time.Duration) func(*processor.Config) {
	return func(c *processor.Config) { c.TimerRenewAge = age }
}

// shortStreamAge makes the events stream delete messages older than maxAge,
// as it does after its 7 days in production: a timer that is not renewed
// in time is gone, pending or not.
func (b *bundle) shortStreamAge(t *testing.T, maxAge time.Duration) {
	t.Helper()
	info, err := b.events.Info(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	cfg.MaxAge, cfg.Duplicates = maxAge, maxAge/2
	if _, err := b.js.UpdateStream(b.ctx, cfg); err != nil {
		t.Fatal(err)
	}
}

// createJob publishes the JobCreated of job.
func (b *bundle) createJob(t *testing.T, job *jobsv1.Job) {
	t.Helper()
	job.Tenant, job.Profile, job.JobType, job.CreateTime = "t1", "P", "AmeJob", timestamppb.Now()
	b.publish(t, bus.SubjectJobCreated, "created-"+job.Id, &eventsv1.JobCreated{Job: job})
}

// timers reads every timer message of job id stored in the stream, in order.
func (b *bundle) timers(t *testing.T, id string) []*jetstream.RawStreamMsg {
	t.Helper()
	var out []*jetstream.RawStreamMsg
	for seq := uint64(1); ; {
		m, err := b.events.GetMsg(b.ctx, seq, jetstream.WithGetMsgSubject(processor.SubjectTimer(id)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
		seq = m.Sequence + 1
	}
}

// liveTimers is how many timers the timer consumer holds: waiting for their
// next check or being handled.
func (b *bundle) liveTimers(t *testing.T) int {
	t.Helper()
	c, err := b.js.Consumer(b.ctx, bus.StreamEvents, processor.DurableTimer)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	return int(info.NumPending) + info.NumAckPending
}

// waitExists waits until job id has a record.
func (b *bundle) waitExists(t *testing.T, id string) {
	t.Helper()
	waitFor(t, "record of "+id, func() bool {
		_, err := b.kv.Get(b.ctx, id)
		return err == nil
	})
}

// An attempt that runs longer than the stream keeps messages is still
// watched: its timer, renewed as it ages, enforces the timeout of one job
// and notices the silence of another's worker, both past the stream's
// MaxAge (without renewal the stream deletes the timers on the way).
func TestTimerRenewedOutlivesStreamMaxAge(t *testing.T) {
	const maxAge = 2 * time.Second
	b := setup(t, oneService(), time.Minute, fast(profiles{"P": {Name: "P", MaxAttempts: 3}}), renewEvery(300*time.Millisecond))
	b.shortStreamAge(t, maxAge)
	b.createJob(t, &jobsv1.Job{Id: "job-long-timeout", Timeout: durationpb.New(2 * maxAge)})
	b.createJob(t, &jobsv1.Job{Id: "job-long-beat"})
	for _, id := range []string{"job-long-timeout", "job-long-beat"} {
		b.waitExists(t, id)
		b.exec(t, update(id, 1, running, 0))
		b.waitRecord(t, id, id+" running", func(r *jobsv1.Job) bool { return r.Status == running })
	}
	stopTimeout, stopBeat := make(chan struct{}), make(chan struct{})
	defer close(stopTimeout)
	b.beat(t, "job-long-timeout", 1, stopTimeout)
	b.beat(t, "job-long-beat", 1, stopBeat)

	time.Sleep(2 * maxAge) // the span being asserted, not a synchronisation
	if rec := b.record(t, "job-long-beat"); rec.Status != running || len(rec.Executions) != 1 {
		t.Fatalf("heart-beating attempt not running after %s: %v", 2*maxAge, rec)
	}

	// Its worker dies: the timer, renewed several times over, notices.
	close(stopBeat)
	rec := b.waitRecord(t, "job-long-beat", "lost worker retried", func(r *jobsv1.Job) bool { return len(r.Executions) == 2 })
	if lost := rec.Executions[0]; lost.GetError().GetType() != record.ProblemWorkerLost {
		t.Fatalf("first attempt ended with %v, want worker lost", lost.GetError())
	}

	rec = b.waitRecord(t, "job-long-timeout", "timed out", func(r *jobsv1.Job) bool { return r.Status == jobsv1.JobStatus_JOB_STATUS_FAILED })
	if rec.GetError().GetType() != record.ProblemTimeout {
		t.Fatalf("job-long-timeout ended with %v, want timeout", rec.GetError())
	}
}

// A deadline further away than the stream keeps messages is enforced: the
// deadline watch of a job no worker takes is renewed until it is due.
func TestDeadlineBeyondStreamMaxAge(t *testing.T) {
	const maxAge = 2 * time.Second
	b := setup(t, oneService(), time.Minute, fast(nil), renewEvery(300*time.Millisecond))
	b.shortStreamAge(t, maxAge)
	deadline := time.Now().Add(2 * maxAge)
	b.createJob(t, &jobsv1.Job{Id: "job-far-deadline", Deadline: timestamppb.New(deadline)})
	b.waitExists(t, "job-far-deadline")
	rec := b.waitRecord(t, "job-far-deadline", "deadline enforced", func(r *jobsv1.Job) bool { return r.Status == jobsv1.JobStatus_JOB_STATUS_FAILED })
	if rec.GetError().GetType() != record.ProblemDeadline {
		t.Fatalf("ended with %v, want deadline passed", rec.GetError())
	}
	if rec.GetEndTime().AsTime().Before(deadline) {
		t.Fatalf("ended at %v, before its deadline %v", rec.GetEndTime().AsTime(), deadline)
	}
}

// Renewal replaces a timer, never adds one: the stream holds one message per
// generation, each generation once, the consumer one live timer, and none
// once the attempt is over.
func TestTimerRenewalKeepsOneTimer(t *testing.T) {
	b := setup(t, oneService(), time.Minute, fast(nil), renewEvery(200*time.Millisecond))
	b.create(t, "job-renew")
	b.waitStatuses(t, "job-renew", "SCHEDULED")
	b.exec(t, update("job-renew", 1, running, 0))
	stop := make(chan struct{})
	defer close(stop)
	b.beat(t, "job-renew", 1, stop)

	const gens = 6
	waitFor(t, fmt.Sprintf("%d timer generations", gens), func() bool { return len(b.timers(t, "job-renew")) >= gens })
	waitFor(t, "one live timer", func() bool { return b.liveTimers(t) == 1 })
	for i, m := range b.timers(t, "job-renew") {
		want := "timer-job-renew-1"
		if i > 0 {
			want += fmt.Sprintf("-r%d", i)
		}
		if id := m.Header.Get(jetstream.MsgIDHeader); id != want {
			t.Fatalf("timer message %d has msg id %q, want %q", i, id, want)
		}
	}
	if rec := b.record(t, "job-renew"); rec.Status != running || len(rec.Executions) != 1 {
		t.Fatalf("heart-beating attempt moved: %v", rec)
	}

	b.exec(t, update("job-renew", 1, completed, 100))
	b.waitStatuses(t, "job-renew", "SCHEDULED RUNNING-0 COMPLETED")
	b.settled(t, processor.DurableTimer)
}

// failFirstRun creates job id with deadline and has its attempt 1 end FAILED
// by its worker's report.
func (b *bundle) failFirstRun(t *testing.T, id string, deadline time.Time) {
	t.Helper()
	b.createJob(t, &jobsv1.Job{Id: id, Deadline: timestamppb.New(deadline)})
	b.waitStatuses(t, id, "SCHEDULED")
	b.exec(t, update(id, 1, jobsv1.JobStatus_JOB_STATUS_FAILED, 0))
	b.waitStatuses(t, id, "SCHEDULED FAILED")
}

// endedUndispatched reports whether rec's executions end with attempt, the
// one a restart added, ended FAILED with problem type typ before any
// dispatch.
func endedUndispatched(rec *jobsv1.Job, attempt int32, typ string) bool {
	cur := jobstate.Current(rec)
	return len(rec.GetExecutions()) == int(attempt) && cur.GetAttempt() == attempt && cur.GetStatus() == jobsv1.JobStatus_JOB_STATUS_FAILED &&
		cur.GetError().GetType() == typ && cur.GetService() == "" && cur.GetDispatchTime() == nil && cur.GetEndTime() != nil
}

// restartRequests numbers the tests' restart requests, standing in for the
// mediator's record revision each is applied on.
var restartRequests atomic.Uint64

// restart asks for job id to run again, as the mediator does: each request
// is a message of its own.
func (b *bundle) restart(t *testing.T, id string, attempts int32) {
	t.Helper()
	b.publish(t, bus.SubjectJobRestart, fmt.Sprintf("restart-%s-%d-rev%d", id, attempts, restartRequests.Add(1)),
		&eventsv1.JobRestartRequested{JobId: id, Tenant: "t1", Attempts: attempts})
}

// A restarted job that waits for a service is failed by its deadline, as a
// first run is, and the mediator hears of it: its end is announced although
// its run before ended FAILED too, moments earlier (the same msg id would
// have the stream drop it as a duplicate).
func TestRestartedJobFailsAtDeadlineWhileQueued(t *testing.T) {
	reg := oneService()
	b := setup(t, reg, time.Minute, fast(nil))
	const id = "job-rq"
	deadline := time.Now().Add(3 * time.Second)
	b.failFirstRun(t, id, deadline)
	reg.set(nil, nil) // no service offers the profile any more
	b.restart(t, id, 1)
	evs := b.waitStatuses(t, id, "SCHEDULED FAILED QUEUED FAILED")
	if p := evs[3].GetError(); p.GetType() != record.ProblemDeadline {
		t.Fatalf("restarted job ended with %v, want deadline passed", p)
	}
	rec := b.record(t, id)
	if rec.Status != jobsv1.JobStatus_JOB_STATUS_FAILED || rec.GetError().GetType() != record.ProblemDeadline || !endedUndispatched(rec, 2, record.ProblemDeadline) {
		t.Fatalf("record = %v, want FAILED deadline passed, the restart's execution with it", rec)
	}
	if rec.GetEndTime().AsTime().Before(deadline) {
		t.Fatalf("ended at %v, before its deadline %v", rec.GetEndTime().AsTime(), deadline)
	}
}

// A job restarted once its deadline has passed ends FAILED
// job-deadline-passed at once, instead of being dispatched to a worker
// that would be stopped as soon as it started.
func TestRestartPastDeadlineFailsAtOnce(t *testing.T) {
	b := setup(t, oneService(), time.Minute, fast(nil))
	const id = "job-rp"
	deadline := time.Now().Add(1500 * time.Millisecond)
	b.failFirstRun(t, id, deadline)
	// Its deadline watch found it ended, past the deadline, and stopped.
	waitFor(t, "the deadline to pass and its watch to end", func() bool { return time.Now().After(deadline) && b.liveTimers(t) == 0 })

	b.restart(t, id, 1)
	evs := b.waitStatuses(t, id, "SCHEDULED FAILED FAILED")
	if p := evs[2].GetError(); p.GetType() != record.ProblemDeadline {
		t.Fatalf("restarted job ended with %v, want deadline passed", p)
	}
	b.settled(t, processor.DurableRestart)
	b.waitStatuses(t, id, "SCHEDULED FAILED FAILED")
	if rec := b.record(t, id); rec.Status != jobsv1.JobStatus_JOB_STATUS_FAILED || rec.GetError().GetType() != record.ProblemDeadline ||
		!endedUndispatched(rec, 2, record.ProblemDeadline) {
		t.Fatalf("record = %v, want FAILED deadline passed, the restart's execution never dispatched", rec)
	}
	// Nothing was queued for a worker to start: the only item is attempt
	// 1's (which its worker, having failed it, acked in real life).
	if _, msgID := b.workItem(t, "probe"); msgID != "work-"+id+"-1" {
		t.Fatalf("last work item %q for a job restarted past its deadline, want only attempt 1's", msgID)
	}
}
