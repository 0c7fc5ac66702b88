package workersdk_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/pkg/workersdk"
	"github.com/medius-platform/medius/pkg/workersdk/workersdktest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

const rigService = "sdk"

// rig is a real NATS with the streams provisioned, a connection for the
// worker and one for the test (submitting items, watching updates), as the
// worker and the processor have their own connections in production.
type rig struct {
	nats *devenv.NATS
	wnc  *nats.Conn
	wjs  jetstream.JetStream
	tnc  *nats.Conn
	tjs  jetstream.JetStream
}

func newRig(tb testing.TB) *rig {
	tb.Helper()
	n, err := devenv.StartNATS(tb.TempDir(), 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(n.Shutdown)
	g := &rig{nats: n}
	if g.wnc, g.wjs, err = bus.Connect(n.URL, "worker"); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(g.wnc.Close)
	if g.tnc, g.tjs, err = bus.Connect(n.URL, "test"); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(g.tnc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.Provision(ctx, g.tjs); err != nil {
		tb.Fatal(err)
	}
	return g
}

// run starts a runner of the bench service until the test ends or the
// returned stop is called (which waits for Run to return).
func (g *rig) run(tb testing.TB, cfg workersdk.Config) (stop func()) {
	tb.Helper()
	cfg.JS, cfg.NC, cfg.Service = g.wjs, g.wnc, rigService
	if cfg.InstanceID == "" {
		cfg.InstanceID = "inst-a"
	}
	if cfg.Logger == nil {
		// Two lines a job: benchmarks would measure the log writer.
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return workersdktest.Run(tb, cfg)
}

// watch calls f with every execution update, until the test ends.
func (g *rig) watch(tb testing.TB, f func(*eventsv1.ExecutionUpdate)) {
	tb.Helper()
	sub, err := g.tnc.Subscribe(bus.SubjectExecutionAll, func(m *nats.Msg) {
		u := &eventsv1.ExecutionUpdate{}
		if err := proto.Unmarshal(m.Data, u); err == nil {
			f(u)
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := g.tnc.Flush(); err != nil {
		tb.Fatal(err)
	}
}

// reports keeps every execution update, by job, for a test to read.
type reports struct {
	mu    sync.Mutex
	byJob map[string][]*eventsv1.ExecutionUpdate
}

// collect gathers every execution update until the test ends.
func (g *rig) collect(tb testing.TB) *reports {
	tb.Helper()
	r := &reports{byJob: map[string][]*eventsv1.ExecutionUpdate{}}
	g.watch(tb, func(u *eventsv1.ExecutionUpdate) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.byJob[u.GetJobId()] = append(r.byJob[u.GetJobId()], u)
	})
	return r
}

// of is job's updates so far, in the order they came.
func (r *reports) of(job string) []*eventsv1.ExecutionUpdate {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.byJob[job])
}

// completed reports whether job's latest update is COMPLETED.
func (r *reports) completed(job string) bool {
	us := r.of(job)
	return len(us) > 0 && us[len(us)-1].GetStatus() == jobsv1.JobStatus_JOB_STATUS_COMPLETED
}

func workItem(job string) *eventsv1.WorkItem {
	return &eventsv1.WorkItem{JobId: job, Tenant: "t1", Attempt: 1, Profile: "NoOp", JobType: "QAJob", Service: rigService}
}

func (g *rig) submit(tb testing.TB, job string) {
	tb.Helper()
	if err := bus.Publish(context.Background(), g.tjs, bus.SubjectWork(rigService, job), "work-"+job+"-1", workItem(job)); err != nil {
		tb.Fatal(err)
	}
}

func noOp(handler func(*workersdk.WorkItem)) workersdk.Profile {
	return workersdk.Profile{
		Spec: &registryv1.JobProfile{Name: "NoOp", JobType: "QAJob"},
		Handler: func(_ context.Context, item *workersdk.WorkItem, _ func(int)) (*jobsv1.JobOutput, float64, error) {
			if handler != nil {
				handler(item)
			}
			return &jobsv1.JobOutput{}, 0, nil
		},
	}
}

// consumerInfo is the state of the work consumer all instances share.
// A runner creates it on start; before that its state is all zeros.
func (g *rig) consumerInfo(t *testing.T) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := g.tjs.Consumer(t.Context(), bus.StreamWork, workersdk.ConsumerName(rigService))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return &jetstream.ConsumerInfo{}
	}
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// checkFor polls cond every 20ms until it holds or timeout passes; msg
// explains the failure (evaluated then, to show the latest state).
func checkFor(t *testing.T, timeout time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHoldsOnlyFreeCapacity: a worker of capacity N with 10N items queued
// holds (has taken and not acked) at most N of them (exactly, while no job
// ends; once the ack of a job that ended has reached the server), so an
// item never waits behind a long job on a busy instance while another one
// could run it; and it still runs them all, each once.
func TestHoldsOnlyFreeCapacity(t *testing.T) {
	const capacity = 4
	g := newRig(t)
	var completed sync.Map
	var completions atomic.Int32
	g.watch(t, func(u *eventsv1.ExecutionUpdate) {
		if u.GetStatus() == jobsv1.JobStatus_JOB_STATUS_COMPLETED {
			if _, dup := completed.LoadOrStore(u.GetJobId(), true); dup {
				t.Errorf("job %s completed twice", u.GetJobId())
			}
			completions.Add(1)
		}
	})
	for i := range 10 * capacity {
		g.submit(t, fmt.Sprintf("job-%d", i))
	}
	release := make(chan struct{})
	var started atomic.Int32
	g.run(t, workersdk.Config{Capacity: capacity, FetchWait: 200 * time.Millisecond, Profiles: []workersdk.Profile{
		noOp(func(*workersdk.WorkItem) { started.Add(1); <-release }),
	}})
	t.Cleanup(func() { close(release) }) // before the runner's stop: a failed test must not hang it

	held := func() bool {
		if n := g.consumerInfo(t).NumAckPending; n > capacity {
			t.Fatalf("worker of capacity %d holds %d items", capacity, n)
		}
		return true
	}
	checkFor(t, 10*time.Second, func() bool { return held() && started.Load() == capacity },
		func() string { return fmt.Sprintf("%d jobs started, want %d", started.Load(), capacity) })
	// Several pulls come and go while every slot is busy: none may take more.
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		held()
	}
	for i := range 10 * capacity {
		release <- struct{}{}
		// A finished job's ack is not waited for, and the server takes acks
		// and pulls on separate queues: it may count the item acked a moment
		// after the slot it freed has taken the next one. What the worker
		// holds must settle at its capacity; an item taken without a free
		// slot would stay held until the next release.
		var n int
		settled := func() bool { n = g.consumerInfo(t).NumAckPending; return n <= capacity }
		checkFor(t, 10*time.Second, settled, func() string { return fmt.Sprintf("capacity %d, %d items held after a job ended", capacity, n) })
		if i%capacity == 0 {
			// Let freed slots be refilled before looking again.
			checkFor(t, 10*time.Second, func() bool { return started.Load() >= min(int32(i+1+capacity), 10*capacity) },
				func() string { return fmt.Sprintf("%d jobs started after %d released", started.Load(), i+1) })
		}
	}
	checkFor(t, 10*time.Second, func() bool { return completions.Load() == 10*capacity },
		func() string { return fmt.Sprintf("%d of %d jobs completed", completions.Load(), 10*capacity) })
	// A job's item is acked just after its COMPLETED is stored: wait for
	// the last acks rather than read the consumer once.
	var info *jetstream.ConsumerInfo
	checkFor(t, 10*time.Second, func() bool {
		info = g.consumerInfo(t)
		return info.NumAckPending == 0 && info.NumPending == 0
	}, func() string {
		return fmt.Sprintf("after all jobs: %d held, %d queued; want 0, 0", info.NumAckPending, info.NumPending)
	})
	if started.Load() != 10*capacity {
		t.Errorf("%d handler calls for %d jobs", started.Load(), 10*capacity)
	}
}

// TestStoppingHandsBackToOthers: an item that reaches a worker while it
// stops taking work (its last pull still open) is handed back, once: it does
// not come back to that worker, which would hand it back again and again
// while its pull lasts, and another instance runs it soon after, not at the
// end of the item's ack wait.
func TestStoppingHandsBackToOthers(t *testing.T) {
	g := newRig(t)
	var ranOnA atomic.Bool
	a, err := workersdk.New(workersdk.Config{JS: g.wjs, NC: g.wnc, Service: rigService, InstanceID: "inst-a",
		// Room for more than one item: a pull of one ends with the first.
		Capacity: 4, FetchWait: 2 * time.Second, AckWait: time.Minute, Logger: slog.New(slog.DiscardHandler),
		Profiles: []workersdk.Profile{noOp(func(*workersdk.WorkItem) { ranOnA.Store(true) })}})
	if err != nil {
		t.Fatal(err)
	}
	// Run A here rather than with workersdktest: the test ends A's context
	// and goes on while A's last pull is open.
	ctx, stopA := context.WithCancel(context.Background())
	var aErr error
	aDone := make(chan struct{})
	go func() { aErr = a.Run(ctx); close(aDone) }()
	waitA := func() {
		stopA()
		select {
		case <-aDone:
		case <-time.After(30 * time.Second):
			t.Fatal("A's Run did not return after its context ended")
		}
		if aErr != nil {
			t.Errorf("A's Run: %v", aErr)
		}
	}
	t.Cleanup(waitA)

	// Wait for A's pull to be waiting, then end A's intake and queue an
	// item while that pull (open for up to 2 s) is still waiting.
	checkFor(t, 10*time.Second, func() bool { return g.consumerInfo(t).NumWaiting > 0 }, func() string { return "no pull waiting" })
	stopA()
	g.submit(t, "late")
	waitA()
	info := g.consumerInfo(t)
	if info.Delivered.Stream == 0 {
		t.Skip("A's pull ended before the item was queued; nothing to check")
	}
	if ranOnA.Load() {
		t.Error("A ran an item taken while it was stopping")
	}
	if info.Delivered.Consumer != 1 {
		t.Errorf("the item was delivered %d times to the stopping instance, want once", info.Delivered.Consumer)
	}

	done := make(chan struct{})
	g.watch(t, func(u *eventsv1.ExecutionUpdate) {
		if u.GetJobId() == "late" && u.GetStatus() == jobsv1.JobStatus_JOB_STATUS_COMPLETED && u.GetInstanceId() == "inst-b" {
			close(done)
		}
	})
	g.run(t, workersdk.Config{InstanceID: "inst-b", AckWait: time.Minute, FetchWait: 200 * time.Millisecond,
		Profiles: []workersdk.Profile{noOp(nil)}})
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		// Had A kept it, it would come back only after its minute of ack wait.
		t.Fatal("item taken by a stopping instance not completed by another one")
	}
}

// TestRunningOnlyPastTheDelay: a job that ends within RunningDelay is
// reported once, by its terminal update, which says when it started; one
// that runs longer is reported RUNNING first, dated from its start, not
// from the report.
func TestRunningOnlyPastTheDelay(t *testing.T) {
	const delay = 300 * time.Millisecond
	g := newRig(t)
	updates := g.collect(t)
	var mu sync.Mutex
	handlerStart := map[string]time.Time{}
	g.run(t, workersdk.Config{Capacity: 2, RunningDelay: delay, FetchWait: 200 * time.Millisecond, Profiles: []workersdk.Profile{
		noOp(func(item *workersdk.WorkItem) {
			mu.Lock()
			handlerStart[item.GetJobId()] = time.Now()
			mu.Unlock()
			if item.GetJobId() == "slow" {
				time.Sleep(3 * delay)
			}
		}),
	}})
	g.submit(t, "quick")
	g.submit(t, "slow")
	checkFor(t, 10*time.Second, func() bool { return updates.completed("quick") && updates.completed("slow") }, func() string {
		return fmt.Sprintf("jobs not completed: quick %v, slow %v", updates.of("quick"), updates.of("slow"))
	})
	mu.Lock()
	defer mu.Unlock()
	near := func(at, want time.Time) bool { return at.Sub(want).Abs() < delay/3 }

	quick := updates.of("quick")
	if len(quick) != 1 {
		t.Fatalf("quick job: %d updates %v, want COMPLETED alone", len(quick), quick)
	}
	if st := quick[0].GetStartTime(); !st.IsValid() || !near(st.AsTime(), handlerStart["quick"]) {
		t.Errorf("quick job's COMPLETED start time %v, want its handler's start %v", st, handlerStart["quick"])
	}

	slow := updates.of("slow")
	if len(slow) != 2 || slow[0].GetStatus() != jobsv1.JobStatus_JOB_STATUS_RUNNING {
		t.Fatalf("slow job: updates %v, want RUNNING then COMPLETED", slow)
	}
	if at := slow[0].GetTime().AsTime(); !near(at, handlerStart["slow"]) {
		t.Errorf("slow job's RUNNING dated %v, want its handler's start %v", at, handlerStart["slow"])
	}
	if !slow[1].GetStartTime().AsTime().Equal(slow[0].GetTime().AsTime()) {
		t.Errorf("slow job's COMPLETED start time %v differs from its RUNNING's %v", slow[1].GetStartTime().AsTime(), slow[0].GetTime().AsTime())
	}
}

// TestRunningDelayBelowAckWait: a delay that would leave the item's ack
// deadline unextended past its first extension is refused.
func TestRunningDelayBelowAckWait(t *testing.T) {
	g := newRig(t)
	_, err := workersdk.New(workersdk.Config{JS: g.wjs, NC: g.wnc, Service: rigService, InstanceID: "i",
		AckWait: 3 * time.Second, RunningDelay: time.Second, Profiles: []workersdk.Profile{noOp(nil)}})
	if err == nil {
		t.Fatal("running delay of 1s with a 3s ack wait accepted")
	}
}

// TestRedeliveredReportedRunningAtOnce: an item delivered again (the worker
// that took it vanished without a word, or handed it back) is reported
// RUNNING at once, however soon it ends. Its first holder may have died
// within the running delay, unseen by the processor, which counts a lost
// worker against the job's attempt limit only once RUNNING is stored: a job
// that kills its worker within the delay would otherwise go from worker to
// worker, an ack wait apart, for ever. A first delivery that ends within
// the delay is still reported by its end alone.
func TestRedeliveredReportedRunningAtOnce(t *testing.T) {
	const ackWait = 3 * time.Second
	g := newRig(t)
	updates := g.collect(t)
	// A worker that takes "crashy" and dies holding it, before any report:
	// the item comes back once its ack wait has passed.
	cons, err := bus.EnsureConsumer(t.Context(), g.tjs, bus.ConsumerConfig{Stream: bus.StreamWork,
		Durable: workersdk.ConsumerName(rigService), Filter: []string{bus.WorkQueue(rigService)}, AckWait: ackWait})
	if err != nil {
		t.Fatal(err)
	}
	g.submit(t, "crashy")
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	taken := 0
	for range batch.Messages() {
		taken++ // and never acknowledged
	}
	if taken != 1 {
		t.Fatalf("the vanishing worker took %d items, want 1 (%v)", taken, batch.Error())
	}
	g.submit(t, "fresh")
	g.run(t, workersdk.Config{AckWait: ackWait, RunningDelay: ackWait/3 - 100*time.Millisecond, FetchWait: 200 * time.Millisecond,
		Profiles: []workersdk.Profile{noOp(nil)}})

	statuses := func(job string) []jobsv1.JobStatus {
		var out []jobsv1.JobStatus
		for _, u := range updates.of(job) {
			out = append(out, u.GetStatus())
		}
		return out
	}
	checkFor(t, 20*time.Second, func() bool { return updates.completed("crashy") && updates.completed("fresh") }, func() string {
		return fmt.Sprintf("jobs not completed: crashy %v, fresh %v", statuses("crashy"), statuses("fresh"))
	})
	if got := statuses("crashy"); len(got) != 2 || got[0] != jobsv1.JobStatus_JOB_STATUS_RUNNING {
		t.Errorf("redelivered item reported %v, want RUNNING then COMPLETED", got)
	}
	if got := statuses("fresh"); len(got) != 1 {
		t.Errorf("item delivered once and done within the delay reported %v, want COMPLETED alone", got)
	}
}

// A stop of an attempt (the processor ended it while this worker, cut off,
// ran on) ends that attempt's run and leaves a later attempt of the same job
// running, even on the same worker; a cancel ends every run of the job.
func TestStopAttemptSparesLaterAttempts(t *testing.T) {
	g := newRig(t)
	updates := g.collect(t)
	const job = "twice"
	var mu sync.Mutex
	started := map[int32]bool{}
	blocking := workersdk.Profile{
		Spec: &registryv1.JobProfile{Name: "NoOp", JobType: "QAJob"},
		Handler: func(ctx context.Context, item *workersdk.WorkItem, _ func(int)) (*jobsv1.JobOutput, float64, error) {
			mu.Lock()
			started[item.GetAttempt()] = true
			mu.Unlock()
			<-ctx.Done()
			return nil, 0, ctx.Err()
		},
	}
	for attempt := int32(1); attempt <= 2; attempt++ {
		item := workItem(job)
		item.Attempt = attempt
		if err := bus.Publish(t.Context(), g.tjs, bus.SubjectWork(rigService, job), fmt.Sprintf("work-%s-%d", job, attempt), item); err != nil {
			t.Fatal(err)
		}
	}
	g.run(t, workersdk.Config{Capacity: 2, FetchWait: 200 * time.Millisecond, Profiles: []workersdk.Profile{blocking}})
	checkFor(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return started[1] && started[2]
	}, func() string { return "both attempts not started" })

	ended := func(attempt int32) jobsv1.JobStatus {
		for _, u := range updates.of(job) {
			if u.GetAttempt() == attempt && u.GetStatus() != jobsv1.JobStatus_JOB_STATUS_RUNNING {
				return u.GetStatus()
			}
		}
		return jobsv1.JobStatus_JOB_STATUS_UNSPECIFIED
	}
	stop := func(subject string, ev *eventsv1.JobCancelRequested) {
		t.Helper()
		if err := bus.PublishCore(t.Context(), g.tnc, subject, ev); err != nil {
			t.Fatal(err)
		}
	}
	stop(bus.SubjectStopAttempt(job), &eventsv1.JobCancelRequested{JobId: job, Tenant: "t1", Attempts: 1, AttemptsKnown: true})
	checkFor(t, 10*time.Second, func() bool { return ended(1) == jobsv1.JobStatus_JOB_STATUS_CANCELED },
		func() string { return fmt.Sprintf("attempt 1 not stopped: %v", updates.of(job)) })
	// Attempt 2's end would have been reported with attempt 1's, had the
	// stop reached it.
	time.Sleep(300 * time.Millisecond)
	if st := ended(2); st != jobsv1.JobStatus_JOB_STATUS_UNSPECIFIED {
		t.Fatalf("attempt 2 ended %s by a stop of attempt 1", st)
	}
	stop(bus.SubjectCancel(job), &eventsv1.JobCancelRequested{JobId: job, Tenant: "t1"})
	checkFor(t, 10*time.Second, func() bool { return ended(2) == jobsv1.JobStatus_JOB_STATUS_CANCELED },
		func() string { return fmt.Sprintf("attempt 2 not canceled: %v", updates.of(job)) })
}

// A handler's output too large to travel in the job's messages fails the
// job, once, naming why, instead of a report NATS refuses (the job then
// taken for lost and run again).
func TestOutputTooLargeFailsTheJob(t *testing.T) {
	g := newRig(t)
	updates := g.collect(t)
	big, err := structpb.NewStruct(map[string]any{"text": strings.Repeat("x", workersdk.MaxOutputBytes)})
	if err != nil {
		t.Fatal(err)
	}
	g.run(t, workersdk.Config{Capacity: 1, Profiles: []workersdk.Profile{{
		Spec: &registryv1.JobProfile{Name: "NoOp", JobType: "QAJob"},
		Handler: func(context.Context, *workersdk.WorkItem, func(int)) (*jobsv1.JobOutput, float64, error) {
			return &jobsv1.JobOutput{Data: big}, 0, nil
		},
	}}})
	g.submit(t, "wordy")
	checkFor(t, 10*time.Second, func() bool {
		u := updates.of("wordy")
		return len(u) > 0 && u[len(u)-1].GetStatus() == jobsv1.JobStatus_JOB_STATUS_FAILED
	}, func() string { return fmt.Sprintf("updates %v, want FAILED", statuses(updates.of("wordy"))) })
	u := updates.of("wordy")
	last := u[len(u)-1]
	if last.GetError().GetType() != problem.TypePrefix+workersdk.TypeOutputTooLarge || last.GetOutput() != nil {
		t.Fatalf("report %s %v (output %d bytes), want FAILED %s without the output", last.GetStatus(), last.GetError(), proto.Size(last.GetOutput()), workersdk.TypeOutputTooLarge)
	}
}

// statuses are updates' statuses, for messages.
func statuses(updates []*eventsv1.ExecutionUpdate) []jobsv1.JobStatus {
	out := make([]jobsv1.JobStatus, len(updates))
	for i, u := range updates {
		out[i] = u.GetStatus()
	}
	return out
}
