package processor_test

import (
	"context"
	"google.golang.org/protobuf/proto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/services/job-processor/internal/processor"
	"github.com/medius-platform/medius/services/job-processor/internal/record"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// profiles stands in for the registry's job profiles.
type profiles map[string]*registryv1.JobProfile

func (p profiles) Profile(_ context.Context, name string) (*registryv1.JobProfile, error) {
	return p[name], nil
}

// fast makes liveness and retries quick enough for a test.
func fast(profs profiles) func(*processor.Config) {
	return func(c *processor.Config) {
		c.HeartbeatTimeout = 600 * time.Millisecond
		c.RetryBackoff = 100 * time.Millisecond
		c.TimerInterval = 200 * time.Millisecond
		c.Profiles = profs
	}
}

// beat sends heartbeats of attempt every 100 ms until the test ends or stop is closed.
func (b *bundle) beat(t *testing.T, id string, attempt int32, stop <-chan struct{}) {
	b.beatEvery(t, id, attempt, 100*time.Millisecond, stop)
}

func (b *bundle) beatEvery(t *testing.T, id string, attempt int32, every time.Duration, stop <-chan struct{}) {
	go func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-b.ctx.Done():
				return
			case <-tick.C:
				u := update(id, attempt, running, 0)
				u.Message = record.HeartbeatMessage
				_ = bus.Publish(b.ctx, b.js, bus.SubjectExecution(id), "", u)
			}
		}
	}()
}

func (b *bundle) waitRecord(t *testing.T, id, what string, cond func(*jobsv1.Job) bool) *jobsv1.Job {
	t.Helper()
	var rec *jobsv1.Job
	waitFor(t, what, func() bool {
		rec = b.record(t, id)
		return cond(rec)
	})
	return rec
}

func TestLostWorkerRetriedThenHeartbeatsKeepItAlive(t *testing.T) {
	b := setup(t, oneService(), time.Minute, fast(profiles{"P": {Name: "P", MaxAttempts: 3}}))
	b.create(t, "job-l")
	b.waitStatuses(t, "job-l", "SCHEDULED")
	b.exec(t, update("job-l", 1, running, 0))
	// No heartbeat follows: the worker died. The job is retried as attempt 2.
	start := time.Now()
	rec := b.waitRecord(t, "job-l", "attempt 2 dispatched", func(r *jobsv1.Job) bool { return len(r.Executions) == 2 })
	t.Logf("lost worker noticed and job re-dispatched in %s", time.Since(start).Round(time.Millisecond))
	lost := rec.Executions[0]
	if lost.GetStatus() != jobsv1.JobStatus_JOB_STATUS_FAILED || lost.GetError().GetType() != record.ProblemWorkerLost || lost.GetEndTime() == nil {
		t.Fatalf("lost execution = %v", lost)
	}
	if w := b.waitWorkItem(t, "probe", "work-job-l-2"); w.GetAttempt() != 2 {
		t.Fatalf("retry work item = %v", w)
	}
	// The lost attempt's item, held by the dead worker, is withdrawn: its
	// redelivery would run attempt 1 again.
	if n := b.workCount(t, "probe"); n != 1 {
		t.Fatalf("%d work items queued for job-l, want only the retry's", n)
	}
	// Attempt 2 heartbeats for three heartbeat timeouts: never taken for lost,
	// even while a zombie of attempt 1 (its item redelivered to a worker)
	// heartbeats more often still.
	stop := make(chan struct{})
	b.exec(t, update("job-l", 2, running, 0))
	b.beat(t, "job-l", 2, stop)
	b.beatEvery(t, "job-l", 1, 15*time.Millisecond, stop)
	time.Sleep(3 * 600 * time.Millisecond) // the span being asserted, not a synchronisation
	close(stop)
	if rec := b.record(t, "job-l"); len(rec.Executions) != 2 || rec.Status != running {
		t.Fatalf("heart-beating attempt lost: %v", rec)
	}
	b.exec(t, update("job-l", 2, completed, 100))
	// A late report of the lost attempt changes nothing.
	b.exec(t, update("job-l", 1, completed, 100))
	b.settled(t, processor.DurableExec)
	evs := b.waitStatuses(t, "job-l", "SCHEDULED RUNNING-0 QUEUED SCHEDULED RUNNING-0 COMPLETED")
	if ex := evs[len(evs)-1].Execution; ex.GetAttempt() != 2 {
		t.Fatalf("completed execution = %v", ex)
	}
}

func TestMaxAttemptsExhausted(t *testing.T) {
	b := setup(t, oneService(), time.Minute, fast(profiles{"P": {Name: "P", MaxAttempts: 2}}))
	b.create(t, "job-m")
	b.waitStatuses(t, "job-m", "SCHEDULED")
	b.exec(t, update("job-m", 1, running, 0))
	b.waitRecord(t, "job-m", "attempt 2", func(r *jobsv1.Job) bool { return len(r.Executions) == 2 })
	b.exec(t, update("job-m", 2, running, 0))
	rec := b.waitRecord(t, "job-m", "job failed", func(r *jobsv1.Job) bool { return r.Status == jobsv1.JobStatus_JOB_STATUS_FAILED })
	if len(rec.Executions) != 2 || rec.GetError().GetType() != record.ProblemWorkerLost || !strings.Contains(rec.GetError().GetDetail(), "2 attempts") {
		t.Fatalf("exhausted job = %v", rec)
	}
	b.waitStatuses(t, "job-m", "SCHEDULED RUNNING-0 QUEUED SCHEDULED RUNNING-0 FAILED")
}

// stopRequests collects the stop requests sent to workers of job id.
func (b *bundle) stopRequests(t *testing.T, id string) <-chan *nats.Msg {
	ch := make(chan *nats.Msg, 8)
	sub, err := b.nc.ChanSubscribe(bus.SubjectCancel(id), ch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return ch
}

func TestProfileTimeoutStopsWorker(t *testing.T) {
	b := setup(t, oneService(), time.Minute, fast(profiles{"P": {Name: "P", DefaultTimeout: durationpb.New(800 * time.Millisecond)}}))
	stops := b.stopRequests(t, "job-t")
	b.create(t, "job-t")
	b.waitStatuses(t, "job-t", "SCHEDULED")
	// The worker's own timeout is only the backstop: it comes after ours.
	if w, _ := b.workItem(t, "probe"); w.GetTimeout().AsDuration() <= 800*time.Millisecond {
		t.Fatalf("worker timeout %v, want more than the profile's 800ms", w.GetTimeout().AsDuration())
	}
	stop := make(chan struct{})
	defer close(stop)
	start := time.Now()
	b.exec(t, update("job-t", 1, running, 0))
	b.beat(t, "job-t", 1, stop)
	rec := b.waitRecord(t, "job-t", "timed out", func(r *jobsv1.Job) bool { return r.Status == jobsv1.JobStatus_JOB_STATUS_FAILED })
	if rec.GetError().GetType() != record.ProblemTimeout || rec.Executions[0].GetError().GetType() != record.ProblemTimeout {
		t.Fatalf("timed out job = %v", rec)
	}
	select {
	case <-stops:
		t.Logf("timeout enforced %s after start", time.Since(start).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("the worker was not told to stop")
	}
	b.waitStatuses(t, "job-t", "SCHEDULED RUNNING-0 FAILED")
}

func TestDeadlineOfWaitingJob(t *testing.T) {
	b := setup(t, oneService(), time.Minute, fast(nil))
	deadline := time.Now().Add(700 * time.Millisecond)
	job := &jobsv1.Job{Id: "job-d", Tenant: "t1", Profile: "P", JobType: "AmeJob", CreateTime: timestamppb.Now(), Deadline: timestamppb.New(deadline)}
	b.publish(t, bus.SubjectJobCreated, "created-job-d", &eventsv1.JobCreated{Job: job})
	// No worker ever takes it.
	evs := b.waitStatuses(t, "job-d", "SCHEDULED FAILED")
	if p := evs[1].GetError(); p.GetType() != record.ProblemDeadline {
		t.Fatalf("problem = %v", p)
	}
	if late := time.Since(deadline); late < 0 || late > 3*time.Second {
		t.Fatalf("deadline enforced %s after it passed", late)
	}
	// The worker that takes the item later is stopped when it says RUNNING.
	stops := b.stopRequests(t, "job-d")
	b.exec(t, update("job-d", 1, running, 0))
	select {
	case <-stops:
	case <-time.After(5 * time.Second):
		t.Fatal("a worker running an expired job was not stopped")
	}
}

func TestRestartFailedJob(t *testing.T) {
	b := setup(t, oneService(), time.Minute, fast(nil))
	b.create(t, "job-r")
	b.waitStatuses(t, "job-r", "SCHEDULED")
	b.exec(t, update("job-r", 1, jobsv1.JobStatus_JOB_STATUS_FAILED, 0))
	b.waitStatuses(t, "job-r", "SCHEDULED FAILED")
	restart := &eventsv1.JobRestartRequested{JobId: "job-r", Tenant: "t1", Attempts: 1}
	for range 2 { // a repeat is a no-op
		b.publish(t, bus.SubjectJobRestart, "", restart)
	}
	b.settled(t, processor.DurableRestart)
	b.waitStatuses(t, "job-r", "SCHEDULED FAILED QUEUED SCHEDULED")
	rec := b.record(t, "job-r")
	if len(rec.Executions) != 2 || rec.Status != jobsv1.JobStatus_JOB_STATUS_SCHEDULED || rec.Error != nil {
		t.Fatalf("restarted record = %v", rec)
	}
	if w := b.waitWorkItem(t, "probe", "work-job-r-2"); w.GetAttempt() != 2 {
		t.Fatalf("restart work item = %v", w)
	}
	// Another tenant cannot restart it; a completed job is not restarted.
	b.exec(t, update("job-r", 2, completed, 100))
	b.publish(t, bus.SubjectJobRestart, "", &eventsv1.JobRestartRequested{JobId: "job-r", Tenant: "t1", Attempts: 2})
	b.publish(t, bus.SubjectJobRestart, "", &eventsv1.JobRestartRequested{JobId: "job-r", Tenant: "t2", Attempts: 2})
	b.settled(t, processor.DurableRestart)
	b.waitStatuses(t, "job-r", "SCHEDULED FAILED QUEUED SCHEDULED COMPLETED")
}

// deliveries is how many messages durable has delivered, redeliveries
// included.
func (b *bundle) deliveries(t *testing.T, durable string) uint64 {
	t.Helper()
	c, err := b.js.Consumer(b.ctx, bus.StreamEvents, durable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.Delivered.Consumer
}

// A restart is applied once per request. Its message is retried while no
// service can take the job; canceled meanwhile, the job stays CANCELED when
// the message comes back (as the mediator was told), and does not run
// when the service returns. The restart made its execution, which ended
// with the run, so the next restart request runs the job as attempt 3.
func TestRestartAppliedOncePerRequest(t *testing.T) {
	reg := oneService()
	instances := reg.instances
	b := setup(t, reg, time.Minute, fast(nil))
	const id = "job-ro"
	b.create(t, id)
	b.waitStatuses(t, id, "SCHEDULED")
	b.exec(t, update(id, 1, jobsv1.JobStatus_JOB_STATUS_FAILED, 0))
	b.waitStatuses(t, id, "SCHEDULED FAILED")

	reg.set(nil, nil) // no service offers the profile any more
	b.restart(t, id, 1)
	b.waitStatuses(t, id, "SCHEDULED FAILED QUEUED")
	delivered := b.deliveries(t, processor.DurableRestart)
	waitFor(t, "the restart retried for want of a service", func() bool { return b.deliveries(t, processor.DurableRestart) > delivered })
	b.publish(t, bus.SubjectJobCancel, "cancel-"+id, &eventsv1.JobCancelRequested{JobId: id, Tenant: "t1"})
	b.waitStatuses(t, id, "SCHEDULED FAILED QUEUED CANCELED")

	reg.set(instances, nil) // the service is back
	b.settled(t, processor.DurableRestart)
	b.settled(t, processor.DurableCreated)
	if rec := b.record(t, id); rec.Status != canceled || len(rec.Executions) != 2 || rec.Executions[1].GetStatus() != canceled ||
		rec.Executions[1].GetService() != "" || rec.Executions[1].GetDispatchTime() != nil {
		t.Fatalf("record after the cancel = %v, want CANCELED, the restart's execution canceled before its dispatch", rec)
	}
	b.waitStatuses(t, id, "SCHEDULED FAILED QUEUED CANCELED")
	if _, msgID := b.workItem(t, "probe"); msgID != "work-"+id+"-1" {
		t.Fatalf("last work item %q, want only attempt 1's", msgID)
	}

	// The next request, as the mediator makes it after the CANCELED: the
	// job has 2 executions.
	b.restart(t, id, 2)
	b.waitStatuses(t, id, "SCHEDULED FAILED QUEUED CANCELED QUEUED SCHEDULED")
	if w := b.waitWorkItem(t, "probe", "work-"+id+"-3"); w.GetAttempt() != 3 {
		t.Fatalf("work item %v, want attempt 3", w)
	}
	if rec := b.record(t, id); len(rec.Executions) != 3 || rec.Executions[2].GetStatus() != jobsv1.JobStatus_JOB_STATUS_SCHEDULED ||
		rec.Executions[2].GetService() != "probe" {
		t.Fatalf("record after the second restart = %v", rec)
	}
}

// createdAgo publishes the JobCreated of job id, created age ago.
func (b *bundle) createdAgo(t *testing.T, id string, age time.Duration) {
	t.Helper()
	job := &jobsv1.Job{Id: id, Tenant: "t1", Profile: "P", JobType: "AmeJob", Status: jobsv1.JobStatus_JOB_STATUS_NEW,
		CreateTime: timestamppb.New(time.Now().Add(-age))}
	b.publish(t, bus.SubjectJobCreated, "created-"+id, &eventsv1.JobCreated{Job: job})
}

// A restarted job waits for a service up to the queue timeout counted from
// its restart, not from its creation: restarted long after it was created,
// it does not fail no-service at once, and runs once a service is back.
func TestRestartWaitsQueueTimeoutFromRestart(t *testing.T) {
	reg := oneService()
	instances := reg.instances
	b := setup(t, reg, time.Minute, fast(nil))
	const id = "job-rw"
	b.createdAgo(t, id, 2*time.Minute)
	b.waitStatuses(t, id, "SCHEDULED")
	b.exec(t, update(id, 1, jobsv1.JobStatus_JOB_STATUS_FAILED, 0))
	b.waitStatuses(t, id, "SCHEDULED FAILED")

	reg.set(nil, nil) // no service offers the profile any more
	b.restart(t, id, 1)
	b.waitStatuses(t, id, "SCHEDULED FAILED QUEUED")
	delivered := b.deliveries(t, processor.DurableRestart)
	waitFor(t, "the restart retried for want of a service", func() bool { return b.deliveries(t, processor.DurableRestart) > delivered })
	if got := names(b.statuses(t, id)); got != "SCHEDULED FAILED QUEUED" {
		t.Fatalf("statuses of a restarted job waiting for a service = %q", got)
	}
	reg.set(instances, nil)
	b.waitStatuses(t, id, "SCHEDULED FAILED QUEUED SCHEDULED")
	if w := b.waitWorkItem(t, "probe", "work-"+id+"-2"); w.GetAttempt() != 2 {
		t.Fatalf("work item %v, want attempt 2", w)
	}
}

// A retry waits for a service up to the queue timeout too, counted from the
// end of its backoff: a job older than the queue timeout whose worker was
// lost while its service went away does not fail no-service at once, and
// its retry runs once a service is back.
func TestRetryWaitsQueueTimeoutAfterBackoff(t *testing.T) {
	reg := oneService()
	instances := reg.instances
	b := setup(t, reg, time.Minute, fast(nil))
	const id = "job-rt"
	b.createdAgo(t, id, 2*time.Minute)
	b.waitStatuses(t, id, "SCHEDULED")
	reg.set(nil, nil) // the service goes away with its worker
	b.exec(t, update(id, 1, running, 0))
	// No heartbeat follows: the worker is lost, the job requeued.
	b.waitStatuses(t, id, "SCHEDULED RUNNING-0 QUEUED")
	delivered := b.deliveries(t, processor.DurableTimer)
	waitFor(t, "the retry looked for a service twice", func() bool { return b.deliveries(t, processor.DurableTimer) >= delivered+2 })
	if got := names(b.statuses(t, id)); got != "SCHEDULED RUNNING-0 QUEUED" {
		t.Fatalf("statuses of a retry waiting for a service = %q", got)
	}
	reg.set(instances, nil)
	b.waitStatuses(t, id, "SCHEDULED RUNNING-0 QUEUED SCHEDULED")
	if w := b.waitWorkItem(t, "probe", "work-"+id+"-2"); w.GetAttempt() != 2 {
		t.Fatalf("retry work item %v, want attempt 2", w)
	}
}

// A job waiting in the queue of a service whose instances all vanished moves
// to the next candidate, its stale item withdrawn; while the service has a
// live instance, or no other service can take it, it stays.
func TestStrandedJobMovesToNextCandidate(t *testing.T) {
	reg := oneService()
	b := setup(t, reg, time.Minute, fast(profiles{"P": {Name: "P"}}))
	// The queue's consumer, as probe's workers made it; none is pulling now.
	if _, err := bus.EnsureConsumer(b.ctx, b.js, bus.ConsumerConfig{Stream: bus.StreamWork, Durable: "worker-probe",
		Filter: []string{bus.WorkQueue("probe")}}); err != nil {
		t.Fatal(err)
	}
	b.create(t, "job-s")
	b.waitStatuses(t, "job-s", "SCHEDULED")
	// probe still registered: several looks later the job has not moved.
	time.Sleep(4 * 600 * time.Millisecond) // the span being asserted, not a synchronisation
	if rec := b.record(t, "job-s"); len(rec.Executions) != 1 {
		t.Fatalf("moved while its service was live: %v", rec)
	}

	reg.set([]*registryv1.ServiceInstance{{Id: "premium-1", Service: "probe-premium", Capacity: 4, Profiles: []string{"P"}}}, nil)
	start := time.Now()
	rec := b.waitRecord(t, "job-s", "attempt 2 on probe-premium", func(r *jobsv1.Job) bool { return len(r.Executions) == 2 })
	t.Logf("stranded job moved in %s", time.Since(start).Round(time.Millisecond))
	moved, cur := rec.Executions[0], rec.Executions[1]
	if moved.GetError().GetType() != record.ProblemServiceGone || cur.GetService() != "probe-premium" || rec.Status != jobsv1.JobStatus_JOB_STATUS_SCHEDULED {
		t.Fatalf("record after the move = %v", rec)
	}
	waitFor(t, "the work item on probe-premium", func() bool { return b.workCount(t, "probe-premium") == 1 })
	if w := b.waitWorkItem(t, "probe-premium", "work-job-s-2"); w.GetAttempt() != 2 {
		t.Fatalf("work item on probe-premium = %v", w)
	}
	waitFor(t, "probe's stale item withdrawn", func() bool { return b.workCount(t, "probe") == 0 })
	evs := b.waitStatuses(t, "job-s", "SCHEDULED SCHEDULED")
	// The move's announcement carries the attempt it ended: no event of its
	// own says so, and the mediator's record would keep it SCHEDULED.
	if evs[0].GetPreviousExecution() != nil {
		t.Fatalf("first SCHEDULED carries a previous execution: %v", evs[0])
	}
	prev := evs[1].GetPreviousExecution()
	if evs[1].GetExecution().GetAttempt() != 2 || evs[1].GetExecution().GetService() != "probe-premium" ||
		prev.GetAttempt() != 1 || prev.GetService() != "probe" || prev.GetStatus() != jobsv1.JobStatus_JOB_STATUS_FAILED ||
		prev.GetError().GetType() != record.ProblemServiceGone {
		t.Fatalf("announcement of the move = %v, want attempt 2 on probe-premium after attempt 1 on probe FAILED service-unavailable", evs[1])
	}
}

// cancelHandled waits until durable has handled its first message: acked
// it, or handed it back and had it delivered again.
func (b *bundle) cancelHandled(t *testing.T) {
	t.Helper()
	waitFor(t, "the cancel handled", func() bool {
		c, err := b.js.Consumer(b.ctx, bus.StreamEvents, processor.DurableCancel)
		if err != nil {
			return false
		}
		info, err := c.Info(b.ctx)
		return err == nil && (info.AckFloor.Consumer >= 1 || info.Delivered.Consumer >= 2)
	})
}

// A cancel asked right after a restart may reach the processor before the
// restart (two consumers, no order between them), and find the job still
// FAILED from its run before. It names the restart's attempt, so it waits
// for the restart and then cancels the new run, which the client was told
// is canceled, instead of doing nothing while the restart runs the job.
func TestCancelWaitsForTheRestartItFollows(t *testing.T) {
	b := setup(t, oneService(), time.Minute, fast(nil))
	const id = "job-cr"
	b.create(t, id)
	b.waitStatuses(t, id, "SCHEDULED")
	b.exec(t, update(id, 1, jobsv1.JobStatus_JOB_STATUS_FAILED, 0))
	b.waitStatuses(t, id, "SCHEDULED FAILED")

	// The mediator restarted the job (its record: attempt 2 QUEUED) and
	// accepted a cancel; the cancel comes first.
	b.publish(t, bus.SubjectJobCancel, "cancel-"+id+"-rev9", &eventsv1.JobCancelRequested{JobId: id, Tenant: "t1", Attempts: 2})
	b.cancelHandled(t)
	if rec := b.record(t, id); rec.Status != jobsv1.JobStatus_JOB_STATUS_FAILED || len(rec.Executions) != 1 {
		t.Fatalf("record before the restart = %v, want FAILED with 1 execution", rec)
	}
	b.restart(t, id, 1)

	b.settled(t, processor.DurableRestart)
	b.settled(t, processor.DurableCancel)
	rec := b.record(t, id)
	if rec.Status != canceled || len(rec.Executions) != 2 || rec.Executions[1].GetStatus() != canceled {
		t.Fatalf("record after the restart and the cancel = %v, want CANCELED with attempt 2 canceled", rec)
	}
	evs := b.statuses(t, id)
	if last := evs[len(evs)-1]; last.Status != canceled || last.GetExecution().GetAttempt() != 2 {
		t.Fatalf("statuses %q, the last = %v, want attempt 2 CANCELED", names(evs), last)
	}
	// No item of attempt 2 is left for a worker to start.
	if n := b.workCount(t, "probe"); n > 0 {
		if _, msgID := b.workItem(t, "probe"); msgID == "work-"+id+"-2" {
			t.Fatalf("work item %s left for the canceled run", msgID)
		}
	}
}

// A cancel naming a restart that never reaches the processor is given up
// after a while (cancelWait) rather than retried for ever, and does not
// linger: the job, restarted later, runs. A cancel without the field, or
// of a record that runs, cancels at once whatever it names.
func TestCancelOfRestartNeverAppliedGivesUp(t *testing.T) {
	var ahead atomic.Int64 // the processor's clock runs this far ahead
	b := setup(t, oneService(), time.Minute, fast(nil), func(c *processor.Config) {
		c.Now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	})
	const id = "job-cg"
	b.create(t, id)
	b.waitStatuses(t, id, "SCHEDULED")
	b.exec(t, update(id, 1, jobsv1.JobStatus_JOB_STATUS_FAILED, 0))
	b.waitStatuses(t, id, "SCHEDULED FAILED")

	ahead.Store(int64(2 * time.Minute)) // the cancel is older than cancelWait at once
	b.publish(t, bus.SubjectJobCancel, "cancel-"+id+"-rev9", &eventsv1.JobCancelRequested{JobId: id, Tenant: "t1", Attempts: 2})
	b.settled(t, processor.DurableCancel)
	if rec := b.record(t, id); rec.Status != jobsv1.JobStatus_JOB_STATUS_FAILED || len(rec.Executions) != 1 {
		t.Fatalf("record after the cancel = %v, want FAILED as it was", rec)
	}
	ahead.Store(0)

	b.restart(t, id, 1)
	b.waitStatuses(t, id, "SCHEDULED FAILED QUEUED SCHEDULED")
	b.exec(t, update(id, 2, running, 10))
	b.waitStatuses(t, id, "SCHEDULED FAILED QUEUED SCHEDULED RUNNING-10")
	// Naming more executions than the record has, but it runs: canceled.
	b.publish(t, bus.SubjectJobCancel, "cancel-"+id+"-rev12", &eventsv1.JobCancelRequested{JobId: id, Tenant: "t1", Attempts: 5})
	b.waitStatuses(t, id, "SCHEDULED FAILED QUEUED SCHEDULED RUNNING-10 CANCELED")
}

// A job whose worker was lost and which then ended while it waited for its
// retry (no service came back within the queue timeout, or a cancel) is
// announced ended; restarted, its run is the attempt that retry would have
// been, and that run's end is announced too, however it ends: the mediator
// hears every end, and the restarted job does not stay RUNNING there for
// good (the stream drops a message whose id it stored within the last 10
// minutes).
func TestRestartAfterEndWhileAwaitingRetryAnnouncesItsEnd(t *testing.T) {
	tests := []struct {
		name string
		// endWaiting ends the job while its retry waits for a service.
		endWaiting func(t *testing.T, b *bundle, id string)
		// endRun ends the restarted run, attempt 2, SCHEDULED.
		endRun func(t *testing.T, b *bundle, id string)
		want   string
	}{{
		name:       "failed no-service, then by its worker",
		endWaiting: func(*testing.T, *bundle, string) {}, // the queue timeout
		endRun: func(t *testing.T, b *bundle, id string) {
			b.exec(t, update(id, 2, jobsv1.JobStatus_JOB_STATUS_FAILED, 0))
		},
		want: "SCHEDULED RUNNING-0 QUEUED FAILED QUEUED SCHEDULED FAILED",
	}, {
		name: "canceled, then canceled again",
		endWaiting: func(t *testing.T, b *bundle, id string) {
			b.publish(t, bus.SubjectJobCancel, "cancel-"+id+"-rev1", &eventsv1.JobCancelRequested{JobId: id, Tenant: "t1", Attempts: 1})
		},
		endRun: func(t *testing.T, b *bundle, id string) {
			b.publish(t, bus.SubjectJobCancel, "cancel-"+id+"-rev2", &eventsv1.JobCancelRequested{JobId: id, Tenant: "t1", Attempts: 2})
		},
		want: "SCHEDULED RUNNING-0 QUEUED CANCELED QUEUED SCHEDULED CANCELED",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := oneService()
			instances := reg.instances
			b := setup(t, reg, 2*time.Second, fast(nil))
			const id = "job-ew"
			b.create(t, id)
			b.waitStatuses(t, id, "SCHEDULED")
			reg.set(nil, nil) // the service goes away with its worker
			b.exec(t, update(id, 1, running, 0))
			// No heartbeat follows: the worker is lost, the job requeued.
			b.waitStatuses(t, id, "SCHEDULED RUNNING-0 QUEUED")
			tt.endWaiting(t, b, id)
			ended := b.waitRecord(t, id, "the job ended while awaiting its retry", func(r *jobsv1.Job) bool {
				return r.Status == jobsv1.JobStatus_JOB_STATUS_FAILED || r.Status == canceled
			})
			if len(ended.Executions) != 1 {
				t.Fatalf("ended record = %v, want attempt 1 only", ended)
			}

			reg.set(instances, nil)
			b.restart(t, id, 1)
			b.waitWorkItem(t, "probe", "work-"+id+"-2")
			b.waitRecord(t, id, "attempt 2 scheduled", func(r *jobsv1.Job) bool { return r.Status == jobsv1.JobStatus_JOB_STATUS_SCHEDULED })
			tt.endRun(t, b, id)
			rec := b.waitRecord(t, id, "the restarted run ended", func(r *jobsv1.Job) bool { return jobstate.IsTerminal(r.Status) })
			if len(rec.Executions) != 2 {
				t.Fatalf("record = %v, want 2 executions", rec)
			}
			evs := b.waitStatuses(t, id, tt.want)
			if last := evs[len(evs)-1]; last.GetExecution().GetAttempt() != 2 {
				t.Fatalf("last announcement %v, want attempt 2's end", last)
			}
		})
	}
}

// A move whose work item went out but whose SCHEDULED did not (two
// publishes of one round trip) is announced when the next look finds the
// stale item: the mediator hears of the new attempt, not only when a
// worker reports on it.
func TestMoveAnnouncedWhenOnlyItsItemWentOut(t *testing.T) {
	reg := oneService()
	b := setup(t, reg, time.Minute, fast(profiles{"P": {Name: "P"}}))
	if _, err := bus.EnsureConsumer(b.ctx, b.js, bus.ConsumerConfig{Stream: bus.StreamWork, Durable: "worker-probe",
		Filter: []string{bus.WorkQueue("probe")}}); err != nil {
		t.Fatal(err)
	}
	const id = "job-half"
	b.create(t, id)
	b.waitStatuses(t, id, "SCHEDULED")

	// The move, half done: the record says attempt 2 on probe-premium and
	// its item is stored there, but no SCHEDULED of attempt 2 went out, and
	// attempt 1's stale item waits in probe's queue.
	e, err := b.kv.Get(b.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	rec := &jobsv1.Job{}
	if err := proto.Unmarshal(e.Value(), rec); err != nil {
		t.Fatal(err)
	}
	if record.Reroute(rec, 1, "probe", "probe-premium", time.Now()) != record.Applied {
		t.Fatalf("reroute of %v not applied", rec)
	}
	data, err := proto.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.kv.Update(b.ctx, id, data, e.Revision()); err != nil {
		t.Fatal(err)
	}
	b.publish(t, bus.SubjectWork("probe-premium", id), record.WorkMsgID(rec), record.WorkItem(rec))

	waitFor(t, "probe's stale item withdrawn", func() bool { return b.workCount(t, "probe") == 0 })
	evs := b.waitStatuses(t, id, "SCHEDULED SCHEDULED")
	if ex := evs[1].GetExecution(); ex.GetAttempt() != 2 || ex.GetService() != "probe-premium" {
		t.Fatalf("second SCHEDULED = %v, want attempt 2 on probe-premium", evs[1])
	}
}

// A cancel redelivered late (its replica died before acking it), after the
// run it ended was restarted, leaves the restarted run alone: the restart
// is newer news. A cancel of the restarted run, naming it, still ends it.
func TestLateCancelSparesTheRestartedRun(t *testing.T) {
	b := setup(t, oneService(), time.Minute, fast(nil))
	const id = "job-lc"
	b.create(t, id)
	b.waitStatuses(t, id, "SCHEDULED")
	b.publish(t, bus.SubjectJobCancel, "cancel-"+id+"-rev2", &eventsv1.JobCancelRequested{JobId: id, Tenant: "t1", Attempts: 1})
	b.waitStatuses(t, id, "SCHEDULED CANCELED")
	b.restart(t, id, 1)
	b.waitRecord(t, id, "attempt 2 scheduled", func(r *jobsv1.Job) bool {
		return len(r.Executions) == 2 && r.Status == jobsv1.JobStatus_JOB_STATUS_SCHEDULED
	})

	// The first cancel again (a redelivery: another message, same content).
	b.publish(t, bus.SubjectJobCancel, "cancel-"+id+"-rev2-again", &eventsv1.JobCancelRequested{JobId: id, Tenant: "t1", Attempts: 1})
	b.settled(t, processor.DurableCancel)
	if rec := b.record(t, id); rec.Status != jobsv1.JobStatus_JOB_STATUS_SCHEDULED || len(rec.Executions) != 2 {
		t.Fatalf("record after a late cancel of the first run = %v, want attempt 2 still SCHEDULED", rec)
	}

	b.publish(t, bus.SubjectJobCancel, "cancel-"+id+"-rev5", &eventsv1.JobCancelRequested{JobId: id, Tenant: "t1", Attempts: 2})
	b.waitRecord(t, id, "attempt 2 canceled", func(r *jobsv1.Job) bool {
		return r.Status == canceled && len(r.Executions) == 2 && r.Executions[1].GetStatus() == canceled
	})
}

// So does a late cancel of a job canceled before any dispatch (QUEUED, no
// service): it names no attempt, and says so, so the restart's attempt 1
// is newer news than it.
func TestLateCancelOfAQueuedJobSparesTheRestartedRun(t *testing.T) {
	reg := oneService()
	instances := reg.instances
	reg.set(nil, nil) // no service yet: the job waits QUEUED
	b := setup(t, reg, time.Minute, fast(nil))
	const id = "job-lq"
	b.create(t, id)
	b.waitStatuses(t, id, "QUEUED")
	cancel := &eventsv1.JobCancelRequested{JobId: id, Tenant: "t1", Attempts: 0, AttemptsKnown: true}
	b.publish(t, bus.SubjectJobCancel, "cancel-"+id+"-rev1", cancel)
	b.waitStatuses(t, id, "QUEUED CANCELED")
	reg.set(instances, nil)
	b.restart(t, id, 0)
	b.waitRecord(t, id, "the restart's attempt 1 scheduled", func(r *jobsv1.Job) bool {
		return len(r.Executions) == 1 && r.Status == jobsv1.JobStatus_JOB_STATUS_SCHEDULED
	})

	// The cancel again (a redelivery: another message, same content).
	b.publish(t, bus.SubjectJobCancel, "cancel-"+id+"-rev1-again", cancel)
	b.settled(t, processor.DurableCancel)
	if rec := b.record(t, id); rec.Status != jobsv1.JobStatus_JOB_STATUS_SCHEDULED || len(rec.Executions) != 1 {
		t.Fatalf("record after a late cancel of the queued run = %v, want attempt 1 still SCHEDULED", rec)
	}
}

// leaveLostItem puts back the work item of job id's lost attempt, as a
// failed purge at the loss leaves it: the worker holding it died, and
// after its ack wait the item would go to another worker. There is no way
// to make the purge fail, so the item is stored again (under an id of its
// own: the stream would drop its first id as a duplicate).
func (b *bundle) leaveLostItem(t *testing.T, id string) {
	t.Helper()
	waitFor(t, "the lost attempt's item withdrawn", func() bool { return b.workCount(t, "probe") == 0 })
	rec := b.record(t, id)
	lost := jobstate.Current(rec)
	if lost.GetError().GetType() != record.ProblemWorkerLost {
		t.Fatalf("current execution %v, want the lost attempt", lost)
	}
	b.publish(t, bus.SubjectWork(lost.GetService(), id), record.WorkMsgID(rec)+"-left", record.WorkItem(rec))
}

// A job whose worker was lost and which ends while it waits for its retry
// (canceled, or its deadline passes) withdraws the lost attempt's work
// item, should its withdrawal at the loss have failed: no worker starts an
// attempt of a job that is over. A worker that took the item already is
// told to stop when it reports it running: that attempt is still the job's
// latest.
func TestEndWhileAwaitingRetryWithdrawsLostItem(t *testing.T) {
	tests := []struct {
		name     string
		deadline time.Duration // 0: none
		end      func(t *testing.T, b *bundle, id string)
		want     string
	}{{
		name: "canceled",
		end: func(t *testing.T, b *bundle, id string) {
			b.publish(t, bus.SubjectJobCancel, "cancel-"+id+"-rev3", &eventsv1.JobCancelRequested{JobId: id, Tenant: "t1", Attempts: 1})
		},
		want: "SCHEDULED RUNNING-0 QUEUED CANCELED",
	}, {
		name:     "deadline passed",
		deadline: 5 * time.Second,
		end:      func(*testing.T, *bundle, string) {},
		want:     "SCHEDULED RUNNING-0 QUEUED FAILED",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The retry waits far longer than the test: the job ends first.
			b := setup(t, oneService(), time.Minute, fast(nil), func(c *processor.Config) { c.RetryBackoff = time.Hour })
			const id = "job-lw"
			job := &jobsv1.Job{Id: id}
			if tt.deadline > 0 {
				job.Deadline = timestamppb.New(time.Now().Add(tt.deadline))
			}
			b.createJob(t, job)
			b.waitStatuses(t, id, "SCHEDULED")
			b.exec(t, update(id, 1, running, 0))
			// No heartbeat follows: the worker is lost, the job waits for its retry.
			b.waitStatuses(t, id, "SCHEDULED RUNNING-0 QUEUED")
			b.leaveLostItem(t, id)
			if rec := b.record(t, id); rec.Status != jobsv1.JobStatus_JOB_STATUS_QUEUED {
				t.Fatalf("job %v before its end; the test needs it still waiting for its retry", rec.Status)
			}

			tt.end(t, b, id)
			b.waitStatuses(t, id, tt.want)
			// The item is withdrawn before the end is announced.
			if n := b.workCount(t, "probe"); n != 0 {
				t.Fatalf("%d work items left for job %s, ended while awaiting its retry", n, id)
			}

			stops := b.stopRequests(t, id)
			b.exec(t, update(id, 1, running, 0))
			select {
			case <-stops:
			case <-time.After(5 * time.Second):
				t.Fatal("a worker running the lost attempt of an ended job was not told to stop")
			}
		})
	}
}

// A job failed because its workers were lost, restarted, withdraws the lost
// attempt's work item, should its withdrawal at the loss have failed: the
// restart makes that attempt an old one, whose worker's reports are
// ignored and who is never told to stop (a stop names only the job, and
// would stop the restarted run too), so a worker taking the item would run
// it through beside the restarted run.
func TestRestartAfterLostWorkersWithdrawsLostItem(t *testing.T) {
	b := setup(t, oneService(), time.Minute, fast(profiles{"P": {Name: "P", MaxAttempts: 1}}))
	const id = "job-lr"
	b.create(t, id)
	b.waitStatuses(t, id, "SCHEDULED")
	b.exec(t, update(id, 1, running, 0))
	b.waitStatuses(t, id, "SCHEDULED RUNNING-0 FAILED")
	b.leaveLostItem(t, id)

	b.restart(t, id, 1)
	b.waitStatuses(t, id, "SCHEDULED RUNNING-0 FAILED QUEUED SCHEDULED")
	b.waitWorkItem(t, "probe", "work-"+id+"-2")
	if n := b.workCount(t, "probe"); n != 1 {
		t.Fatalf("%d work items queued for restarted job %s, want only the restart's", n, id)
	}
}
