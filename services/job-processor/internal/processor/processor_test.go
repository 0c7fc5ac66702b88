package processor_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/services/job-processor/internal/processor"
	"github.com/medius-platform/medius/services/job-processor/internal/selection"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// registryStandIn stands in for the service registry's lookup, which is
// another service (the end-to-end test runs the real registry binary). It
// answers from a fixed instance list that a test may swap, or with an error,
// as an unreachable registry would.
type registryStandIn struct {
	mu        sync.Mutex
	instances []*registryv1.ServiceInstance
	services  map[string]*registryv1.Service
	err       error
}

func (r *registryStandIn) Instances(_ context.Context, profile string) ([]*registryv1.ServiceInstance, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return nil, r.err
	}
	var out []*registryv1.ServiceInstance
	for _, in := range r.instances {
		if slices.Contains(in.Profiles, profile) {
			out = append(out, in)
		}
	}
	return out, nil
}

func (r *registryStandIn) Service(_ context.Context, name string) (*registryv1.Service, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return nil, r.err
	}
	if s, ok := r.services[name]; ok {
		return s, nil
	}
	return nil, selection.ErrUnknownService
}

func (r *registryStandIn) set(instances []*registryv1.ServiceInstance, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.instances, r.err = instances, err
}

// oneService: the service "probe" with one instance offering profile "P", and
// a dearer "probe-premium" that must not be chosen.
func oneService() *registryStandIn {
	return &registryStandIn{
		instances: []*registryv1.ServiceInstance{
			{Id: "probe-1", Service: "probe", Capacity: 4, Profiles: []string{"P"}},
			{Id: "premium-1", Service: "probe-premium", Capacity: 4, Profiles: []string{"P"}},
		},
		services: map[string]*registryv1.Service{
			"probe":         {Name: "probe", CostPerUnit: 1},
			"probe-premium": {Name: "probe-premium", CostPerUnit: 5},
		},
	}
}

type bundle struct {
	ctx    context.Context
	nc     *nats.Conn
	js     jetstream.JetStream
	events jetstream.Stream
	work   jetstream.Stream
	kv     jetstream.KeyValue
	// stop stops the processor setup started and waits for it.
	stop func()
}

// setup starts NATS, provisions it and runs a processor on it until the test ends.
func setup(t *testing.T, lookup selection.Lookup, queueTimeout time.Duration, tweaks ...func(*processor.Config)) *bundle {
	t.Helper()
	n, err := devenv.StartNATS(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	nc, js, err := bus.Connect(n.URL, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := bus.Provision(ctx, js); err != nil {
		t.Fatal(err)
	}
	b := &bundle{ctx: ctx, nc: nc, js: js}
	if b.events, err = js.Stream(ctx, bus.StreamEvents); err != nil {
		t.Fatal(err)
	}
	if b.work, err = js.Stream(ctx, bus.StreamWork); err != nil {
		t.Fatal(err)
	}
	if b.kv, err = js.KeyValue(ctx, bus.BucketExecutions); err != nil {
		t.Fatal(err)
	}
	b.stop = b.run(t, lookup, queueTimeout, tweaks...)
	return b
}

// run starts a processor (a replica, when there is one already) until the
// test ends or the returned stop is called, which waits for Run to return.
func (b *bundle) run(t *testing.T, lookup selection.Lookup, queueTimeout time.Duration, tweaks ...func(*processor.Config)) (stop func()) {
	t.Helper()
	cfg := processor.Config{JS: b.js, NC: b.nc, Selector: selection.New(lookup), QueueTimeout: queueTimeout, CancelDeliveries: 50}
	for _, tw := range tweaks {
		tw(&cfg)
	}
	p, err := processor.New(b.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(stop)
	waitFor(t, "processor ready", p.Ready)
	return stop
}

// waitFor polls cond until it holds, failing the test after 15 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *bundle) publish(t *testing.T, subject, msgID string, m proto.Message) {
	t.Helper()
	if err := bus.Publish(b.ctx, b.js, subject, msgID, m); err != nil {
		t.Fatal(err)
	}
}

func (b *bundle) create(t *testing.T, id string) {
	t.Helper()
	job := &jobsv1.Job{Id: id, Tenant: "t1", Profile: "P", JobType: "AmeJob", Status: jobsv1.JobStatus_JOB_STATUS_NEW,
		Timeout: nil, CreateTime: timestamppb.Now(),
		Input: &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{"inputFile": {Url: "file:///media/a.mp4"}}}}
	b.publish(t, bus.SubjectJobCreated, "created-"+id, &eventsv1.JobCreated{Job: job})
}

// exec publishes a worker's report. msgID "" publishes without one, so the
// stream keeps duplicates and the processor really sees them twice.
func (b *bundle) exec(t *testing.T, u *eventsv1.ExecutionUpdate) {
	t.Helper()
	b.publish(t, bus.SubjectExecution(u.JobId), "", u)
}

// statuses reads every JobStatusChanged of job id stored in the stream, in order.
func (b *bundle) statuses(t *testing.T, id string) []*eventsv1.JobStatusChanged {
	t.Helper()
	var out []*eventsv1.JobStatusChanged
	for seq := uint64(1); ; {
		m, err := b.events.GetMsg(b.ctx, seq, jetstream.WithGetMsgSubject(bus.SubjectJobStatus(id)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		ev := &eventsv1.JobStatusChanged{}
		if err := proto.Unmarshal(m.Data, ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
		seq = m.Sequence + 1
	}
}

func names(evs []*eventsv1.JobStatusChanged) string {
	var s []string
	for _, ev := range evs {
		n := jobstate.Name(ev.Status)
		if ev.Status == jobsv1.JobStatus_JOB_STATUS_RUNNING {
			n += fmt.Sprintf("-%d", ev.Progress)
		}
		s = append(s, n)
	}
	return strings.Join(s, " ")
}

// waitStatuses waits until job id's announcements are exactly want.
func (b *bundle) waitStatuses(t *testing.T, id, want string) []*eventsv1.JobStatusChanged {
	t.Helper()
	var got []*eventsv1.JobStatusChanged
	deadline := time.Now().Add(15 * time.Second)
	for {
		got = b.statuses(t, id)
		if names(got) == want {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("statuses of %s = %q, want %q", id, names(got), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settled waits until durable has handled every message it was given, so an
// assertion that something did NOT happen is not premature.
func (b *bundle) settled(t *testing.T, durable string) {
	t.Helper()
	waitFor(t, durable+" settled", func() bool {
		c, err := b.js.Consumer(b.ctx, bus.StreamEvents, durable)
		if err != nil {
			return false
		}
		info, err := c.Info(b.ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}

// record reads job id's record, waiting for it to be stored: a first
// announcement's record is stored alongside its work item.
func (b *bundle) record(t *testing.T, id string) *jobsv1.Job {
	t.Helper()
	var e jetstream.KeyValueEntry
	waitFor(t, "the record of "+id, func() bool {
		var err error
		e, err = b.kv.Get(b.ctx, id)
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Fatalf("record %s: %v", id, err)
		}
		return err == nil
	})
	rec := &jobsv1.Job{}
	if err := proto.Unmarshal(e.Value(), rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// workItem reads the last work item stored for service, with its msg id,
// waiting for one: the processor stores a job's record, its work item and
// its announcement on different streams, so a test that saw one of the
// others may be a moment early for the item.
func (b *bundle) workItem(t *testing.T, service string) (*eventsv1.WorkItem, string) {
	t.Helper()
	var m *jetstream.RawStreamMsg
	waitFor(t, "a work item for "+service, func() bool {
		var err error
		m, err = b.work.GetLastMsgForSubject(b.ctx, bus.WorkQueue(service))
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			t.Fatalf("work item for %s: %v", service, err)
		}
		return err == nil
	})
	w := &eventsv1.WorkItem{}
	if err := proto.Unmarshal(m.Data, w); err != nil {
		t.Fatal(err)
	}
	return w, m.Header.Get(jetstream.MsgIDHeader)
}

// waitWorkItem waits until the last work item stored for service is the
// one with msgID (a retry's item follows its record's update) and returns it.
func (b *bundle) waitWorkItem(t *testing.T, service, msgID string) *eventsv1.WorkItem {
	t.Helper()
	var w *eventsv1.WorkItem
	waitFor(t, "work item "+msgID, func() bool {
		var id string
		w, id = b.workItem(t, service)
		return id == msgID
	})
	return w
}

func (b *bundle) workCount(t *testing.T, service string) uint64 {
	t.Helper()
	info, err := b.work.Info(b.ctx, jetstream.WithSubjectFilter(bus.WorkQueue(service)))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

func update(id string, attempt int32, st jobsv1.JobStatus, progress int32) *eventsv1.ExecutionUpdate {
	return &eventsv1.ExecutionUpdate{JobId: id, Attempt: attempt, Service: "probe", InstanceId: "probe-1", Status: st, Progress: progress, Time: timestamppb.Now()}
}

const (
	running   = jobsv1.JobStatus_JOB_STATUS_RUNNING
	completed = jobsv1.JobStatus_JOB_STATUS_COMPLETED
	canceled  = jobsv1.JobStatus_JOB_STATUS_CANCELED
)

func TestHappyPath(t *testing.T) {
	b := setup(t, oneService(), time.Minute)
	b.create(t, "job-1")
	b.waitStatuses(t, "job-1", "SCHEDULED")

	w, msgID := b.workItem(t, "probe")
	if w.JobId != "job-1" || w.Attempt != 1 || w.Tenant != "t1" || w.Profile != "P" || w.JobType != "AmeJob" || w.Service != "probe" ||
		w.Input.GetLocators()["inputFile"].GetUrl() != "file:///media/a.mp4" {
		t.Errorf("work item = %v", w)
	}
	if msgID != "work-job-1-1" {
		t.Errorf("work item msg id = %q", msgID)
	}
	if n := b.workCount(t, "probe-premium"); n != 0 {
		t.Errorf("%d work items for the dearer service", n)
	}

	// Every report twice: the second is a no-op, announced under the same msg id.
	for range 2 {
		b.exec(t, update("job-1", 1, running, 0))
	}
	b.waitStatuses(t, "job-1", "SCHEDULED RUNNING-0")
	for range 2 {
		b.exec(t, update("job-1", 1, running, 40))
	}
	// Reports of one job are handled concurrently, so a COMPLETED sent at
	// once could overtake this progress (which is then, rightly, not
	// announced); a real worker's reports are seconds apart.
	b.waitStatuses(t, "job-1", "SCHEDULED RUNNING-0 RUNNING-40")
	out := &jobsv1.JobOutput{Data: &structpb.Struct{Fields: map[string]*structpb.Value{"duration": structpb.NewNumberValue(42)}}}
	done := update("job-1", 1, completed, 100)
	done.Output, done.VerifiedQuantity = out, 42
	for range 2 {
		b.exec(t, done)
	}
	b.waitStatuses(t, "job-1", "SCHEDULED RUNNING-0 RUNNING-40 COMPLETED")
	// A late report of an earlier state (once the end is applied: reports
	// of one job are handled concurrently) is ignored.
	b.exec(t, update("job-1", 1, running, 60))
	b.settled(t, processor.DurableExec)
	evs := b.waitStatuses(t, "job-1", "SCHEDULED RUNNING-0 RUNNING-40 COMPLETED")

	last := evs[len(evs)-1]
	if !proto.Equal(last.Output, out) || last.VerifiedQuantity != 42 || last.Progress != 100 || last.Time == nil {
		t.Errorf("COMPLETED event = %v", last)
	}
	if ex := last.Execution; ex.GetAttempt() != 1 || ex.GetService() != "probe" || ex.GetInstanceId() != "probe-1" ||
		ex.GetStatus() != completed || ex.GetStartTime() == nil || ex.GetEndTime() == nil || ex.GetDispatchTime() == nil {
		t.Errorf("COMPLETED execution = %v", ex)
	}
	if rec := b.record(t, "job-1"); rec.Status != completed || len(rec.Executions) != 1 || rec.Progress != 100 {
		t.Errorf("record = %v", rec)
	}

	// A redelivered JobCreated (new msg id, as after a purge) re-announces, never re-dispatches.
	b.publish(t, bus.SubjectJobCreated, "created-job-1-again", &eventsv1.JobCreated{Job: &jobsv1.Job{Id: "job-1", Tenant: "t1", Profile: "P"}})
	b.settled(t, processor.DurableCreated)
	b.waitStatuses(t, "job-1", "SCHEDULED RUNNING-0 RUNNING-40 COMPLETED")
	if rec := b.record(t, "job-1"); len(rec.Executions) != 1 {
		t.Errorf("redelivered JobCreated made %d executions", len(rec.Executions))
	}
}

func TestWorkerFailure(t *testing.T) {
	b := setup(t, oneService(), time.Minute)
	b.create(t, "job-f")
	b.waitStatuses(t, "job-f", "SCHEDULED")
	fail := update("job-f", 1, jobsv1.JobStatus_JOB_STATUS_FAILED, 0)
	fail.Error = &jobsv1.Problem{Type: "urn:medius:problem:input-not-found", Title: "Input not found", Detail: "no such file a.mp4"}
	b.exec(t, fail)
	evs := b.waitStatuses(t, "job-f", "SCHEDULED FAILED")
	if !proto.Equal(evs[1].Error, fail.Error) || !proto.Equal(evs[1].Execution.GetError(), fail.Error) {
		t.Errorf("FAILED event = %v", evs[1])
	}
}

// An update for an attempt other than the current one changes nothing. The
// record is seeded as a retry (a later issue's work) would leave it.
func TestOldAttemptIgnored(t *testing.T) {
	b := setup(t, oneService(), time.Minute)
	rec := &jobsv1.Job{Id: "job-2", Tenant: "t1", Profile: "P", Status: running, Progress: 10, CreateTime: timestamppb.Now(),
		Executions: []*jobsv1.Execution{
			{Attempt: 1, Service: "probe", InstanceId: "dead", Status: jobsv1.JobStatus_JOB_STATUS_FAILED},
			{Attempt: 2, Service: "probe", InstanceId: "probe-1", Status: running, Progress: 10},
		}}
	data, _ := proto.Marshal(rec)
	if _, err := b.kv.Create(b.ctx, "job-2", data); err != nil {
		t.Fatal(err)
	}
	b.exec(t, update("job-2", 1, completed, 100))
	b.exec(t, update("job-2", 1, running, 90))
	b.settled(t, processor.DurableExec)
	if got := b.statuses(t, "job-2"); len(got) != 0 {
		t.Errorf("old attempt announced %q", names(got))
	}
	if got := b.record(t, "job-2"); !proto.Equal(got, rec) {
		t.Errorf("record changed:\n got %v\nwant %v", got, rec)
	}
	b.exec(t, update("job-2", 2, running, 20))
	evs := b.waitStatuses(t, "job-2", "RUNNING-20")
	if evs[0].Execution.GetAttempt() != 2 {
		t.Errorf("announced attempt %d", evs[0].Execution.GetAttempt())
	}
}

func TestNoServiceFails(t *testing.T) {
	b := setup(t, &registryStandIn{}, 700*time.Millisecond)
	b.create(t, "job-3")
	evs := b.waitStatuses(t, "job-3", "QUEUED FAILED")
	p := evs[1].Error
	if p.GetType() != "urn:medius:problem:no-service" || p.GetDetail() != `no service offers profile "P"` {
		t.Errorf("problem = %v", p)
	}
	b.settled(t, processor.DurableCreated)
	if rec := b.record(t, "job-3"); rec.Status != jobsv1.JobStatus_JOB_STATUS_FAILED || len(rec.Executions) != 0 {
		t.Errorf("record = %v", rec)
	}
}

// A registry that cannot be asked is no reason to fail a job, however long
// it lasts; once it answers, the job is dispatched.
func TestRegistryDownIsTransient(t *testing.T) {
	reg := oneService()
	instances := reg.instances
	reg.set(nil, errors.New("registry unavailable"))
	b := setup(t, reg, 300*time.Millisecond)
	b.create(t, "job-4")
	b.waitStatuses(t, "job-4", "QUEUED")
	waitFor(t, "several deliveries past the queue timeout", func() bool {
		c, err := b.js.Consumer(b.ctx, bus.StreamEvents, processor.DurableCreated)
		if err != nil {
			return false
		}
		info, err := c.Info(b.ctx)
		return err == nil && info.Delivered.Consumer >= 4
	})
	if got := names(b.statuses(t, "job-4")); got != "QUEUED" {
		t.Fatalf("statuses while the registry is down = %q", got)
	}
	reg.set(instances, nil)
	b.waitStatuses(t, "job-4", "QUEUED SCHEDULED")
}

func TestCancel(t *testing.T) {
	b := setup(t, oneService(), time.Minute)
	b.create(t, "job-5")
	b.waitStatuses(t, "job-5", "SCHEDULED")
	b.exec(t, update("job-5", 1, running, 30))
	b.waitStatuses(t, "job-5", "SCHEDULED RUNNING-30")

	stops, err := b.nc.SubscribeSync(bus.SubjectCancel("job-5"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// Another tenant's request is refused.
	b.publish(t, bus.SubjectJobCancel, "cancel-job-5-x", &eventsv1.JobCancelRequested{JobId: "job-5", Tenant: "intruder"})
	b.settled(t, processor.DurableCancel)
	if rec := b.record(t, "job-5"); rec.Status != running {
		t.Fatalf("another tenant's cancel moved the job to %v", rec.Status)
	}

	b.publish(t, bus.SubjectJobCancel, "cancel-job-5", &eventsv1.JobCancelRequested{JobId: "job-5", Tenant: "t1"})
	evs := b.waitStatuses(t, "job-5", "SCHEDULED RUNNING-30 CANCELED")
	if ex := evs[2].Execution; ex.GetStatus() != canceled || ex.GetEndTime() == nil {
		t.Errorf("CANCELED execution = %v", ex)
	}
	m, err := stops.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no stop request for the worker: %v", err)
	}
	req := &eventsv1.JobCancelRequested{}
	if err := proto.Unmarshal(m.Data, req); err != nil || req.JobId != "job-5" {
		t.Errorf("stop request = %v, %v", req, err)
	}

	// The worker's late reports change nothing.
	b.exec(t, update("job-5", 1, completed, 100))
	b.exec(t, update("job-5", 1, canceled, 30))
	b.settled(t, processor.DurableExec)
	b.waitStatuses(t, "job-5", "SCHEDULED RUNNING-30 CANCELED")
	if rec := b.record(t, "job-5"); rec.Status != canceled {
		t.Errorf("record status = %v", rec.Status)
	}
}

// Canceling a job no worker has started withdraws its work item, so none
// starts it later.
func TestCancelWithdrawsQueuedItem(t *testing.T) {
	b := setup(t, oneService(), time.Minute)
	b.create(t, "job-q")
	b.waitStatuses(t, "job-q", "SCHEDULED")
	b.workItem(t, "probe") // stored with SCHEDULED, on another stream
	if n := b.workCount(t, "probe"); n != 1 {
		t.Fatalf("%d work items before the cancel", n)
	}
	b.publish(t, bus.SubjectJobCancel, "cancel-job-q", &eventsv1.JobCancelRequested{JobId: "job-q", Tenant: "t1"})
	b.waitStatuses(t, "job-q", "SCHEDULED CANCELED")
	if n := b.workCount(t, "probe"); n != 0 {
		t.Fatalf("%d work items left for a canceled job", n)
	}
}

// A cancel within the worker's running delay finds the job SCHEDULED, its
// execution without a start: the worker, which reports RUNNING only past
// the delay, had taken it already. Its report that follows (CANCELED, told
// to stop; COMPLETED, done before the stop came; RUNNING, had it missed the
// stop) changes nothing but says that the attempt ran, since when and
// where, which the execution then shows. The mediator, whose record took
// the end as announced, without them, is told too: the end is announced
// once more, with them, and only once (the report again is a duplicate).
func TestCancelWithinRunningDelayKeepsStart(t *testing.T) {
	for _, report := range []jobsv1.JobStatus{canceled, completed, running} {
		t.Run(jobstate.Name(report), func(t *testing.T) {
			b := setup(t, oneService(), time.Minute)
			const id = "job-d"
			b.create(t, id)
			b.waitStatuses(t, id, "SCHEDULED")
			stops := b.stopRequests(t, id)
			start := time.Now().Truncate(time.Millisecond) // the worker takes the item
			b.publish(t, bus.SubjectJobCancel, "cancel-"+id, &eventsv1.JobCancelRequested{JobId: id, Tenant: "t1"})
			b.waitStatuses(t, id, "SCHEDULED CANCELED")
			if ex := b.record(t, id).GetExecutions()[0]; ex.GetStartTime() != nil {
				t.Fatalf("execution canceled before any report has a start: %v", ex)
			}
			<-stops // the cancel's
			u := update(id, 1, report, 0)
			u.StartTime = timestamppb.New(start)
			if report == completed {
				u.Progress, u.VerifiedQuantity = 100, 7
				u.Output = &jobsv1.JobOutput{Data: &structpb.Struct{}}
			}
			for range 2 {
				b.exec(t, u)
			}
			b.settled(t, processor.DurableExec)
			evs := b.waitStatuses(t, id, "SCHEDULED CANCELED CANCELED")
			if ex := evs[1].GetExecution(); ex.GetStartTime() != nil || ex.GetInstanceId() != "" {
				t.Errorf("the cancel's announcement: execution %v, want no start yet", ex)
			}
			last := evs[2]
			if ex := last.GetExecution(); ex.GetAttempt() != 1 || ex.GetStatus() != canceled || !ex.GetStartTime().AsTime().Equal(start) ||
				ex.GetInstanceId() != "probe-1" || ex.GetEndTime() == nil {
				t.Errorf("announcement after the report: execution %v, want attempt 1 CANCELED, started at %v on probe-1", ex, start)
			}
			if last.GetOutput() != nil || last.GetVerifiedQuantity() != 0 || last.GetProgress() != 0 {
				t.Errorf("announcement after the report took more than the start: %v", last)
			}
			rec := b.record(t, id)
			if ex := rec.GetExecutions()[0]; rec.Status != canceled || ex.GetStatus() != canceled || !ex.GetStartTime().AsTime().Equal(start) ||
				ex.GetInstanceId() != "probe-1" || ex.GetEndTime() == nil || rec.GetOutput() != nil || rec.GetVerifiedQuantity() != 0 {
				t.Errorf("record %v: %v, want CANCELED, execution started at %v on probe-1", jobstate.Name(rec.Status), rec, start)
			}
			if report == running {
				// A worker that missed the stop is told again.
				select {
				case <-stops:
				case <-time.After(5 * time.Second):
					t.Error("the worker reporting RUNNING after the cancel was not told to stop")
				}
			}
		})
	}
}

// A cancel that overtakes its JobCreated is retried until the record exists.
func TestCancelBeforeCreated(t *testing.T) {
	b := setup(t, &registryStandIn{}, time.Minute)
	b.publish(t, bus.SubjectJobCancel, "cancel-job-6", &eventsv1.JobCancelRequested{JobId: "job-6", Tenant: "t1"})
	waitFor(t, "the cancel to be retried", func() bool {
		c, err := b.js.Consumer(b.ctx, bus.StreamEvents, processor.DurableCancel)
		if err != nil {
			return false
		}
		info, err := c.Info(b.ctx)
		return err == nil && info.NumRedelivered > 0
	})
	b.create(t, "job-6")
	waitFor(t, "job-6 canceled", func() bool {
		evs := b.statuses(t, "job-6")
		return len(evs) > 0 && evs[len(evs)-1].Status == canceled
	})
	b.settled(t, processor.DurableCreated)
	if got := names(b.statuses(t, "job-6")); got != "QUEUED CANCELED" {
		t.Errorf("statuses = %q", got)
	}
}

// A crash between recording SCHEDULED and publishing the work item is healed
// by the redelivered JobCreated: the same work item, once.
func TestCrashAfterScheduleHealed(t *testing.T) {
	b := setup(t, oneService(), time.Minute)
	rec := &jobsv1.Job{Id: "job-7", Tenant: "t1", Profile: "P", Status: jobsv1.JobStatus_JOB_STATUS_SCHEDULED, CreateTime: timestamppb.Now(),
		Executions: []*jobsv1.Execution{{Attempt: 1, Service: "probe", Status: jobsv1.JobStatus_JOB_STATUS_SCHEDULED, DispatchTime: timestamppb.Now()}}}
	data, _ := proto.Marshal(rec)
	if _, err := b.kv.Create(b.ctx, "job-7", data); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		b.publish(t, bus.SubjectJobCreated, fmt.Sprintf("created-job-7-%d", i), &eventsv1.JobCreated{Job: rec})
	}
	b.settled(t, processor.DurableCreated)
	b.waitStatuses(t, "job-7", "SCHEDULED")
	if w, id := b.workItem(t, "probe"); w.JobId != "job-7" || id != "work-job-7-1" {
		t.Errorf("work item %v (msg id %q)", w, id)
	}
	if n := b.workCount(t, "probe"); n != 1 {
		t.Errorf("%d work items, want 1", n)
	}
}

// Replicas share the durable consumers: every job is dispatched once and
// announced once per state, whichever replica handles which event.
func TestReplicas(t *testing.T) {
	reg := oneService()
	b := setup(t, reg, time.Minute)
	b.run(t, reg, time.Minute)
	b.run(t, reg, time.Minute)
	const jobs = 12
	for i := range jobs {
		b.create(t, fmt.Sprintf("job-r%d", i))
	}
	for i := range jobs {
		id := fmt.Sprintf("job-r%d", i)
		b.waitStatuses(t, id, "SCHEDULED")
		b.exec(t, update(id, 1, running, 0))
		b.exec(t, update(id, 1, running, 0))
	}
	// Replicas may handle one job's updates out of order (a RUNNING overtaken
	// by its COMPLETED is never announced), so the test lets RUNNING land
	// first, as a real worker's pace does.
	for i := range jobs {
		id := fmt.Sprintf("job-r%d", i)
		b.waitStatuses(t, id, "SCHEDULED RUNNING-0")
		b.exec(t, update(id, 1, completed, 100))
		b.exec(t, update(id, 1, completed, 100))
	}
	for i := range jobs {
		id := fmt.Sprintf("job-r%d", i)
		b.waitStatuses(t, id, "SCHEDULED RUNNING-0 COMPLETED")
		if rec := b.record(t, id); len(rec.Executions) != 1 || rec.Status != completed {
			t.Errorf("record of %s = %v", id, rec)
		}
	}
	if n := b.workCount(t, "probe"); n != jobs {
		t.Errorf("%d work items, want %d", n, jobs)
	}
}
