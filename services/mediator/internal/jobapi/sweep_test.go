package jobapi

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// storeNew stores a NEW job and publishes nothing, as a mediator dying right
// after the store would.
func storeNew(t *testing.T, f *fixture, requestID string) *jobsv1.Job {
	t.Helper()
	id, err := jobstore.NewID()
	if err != nil {
		t.Fatal(err)
	}
	j := &jobsv1.Job{Id: id, Tenant: "acme", Profile: "ExtractTechnicalMetadata", Status: jobsv1.JobStatus_JOB_STATUS_NEW,
		RequestId: requestID, CreateTime: timestamppb.Now()}
	if _, err := f.store.Create(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	return j
}

// moveOn writes the job to status, as the status consumer applying the
// processor's news would.
func moveOn(t *testing.T, f *fixture, id string, status jobsv1.JobStatus) {
	t.Helper()
	job, rev, err := f.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	job.Status = status
	if _, err := f.store.Update(context.Background(), job, rev); err != nil {
		t.Fatal(err)
	}
}

// later makes the server's clock run d ahead, so jobs stored now are d old.
func later(f *fixture, d time.Duration) { f.srv.now = func() time.Time { return time.Now().Add(d) } }

func round(t *testing.T, w *sweeper) {
	t.Helper()
	if err := w.round(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// announced reads n JobCreated events and returns their msg ids by job.
func announced(ev *testsupport.Events, n int) map[string]string {
	got := map[string]string{}
	for range n {
		var e eventsv1.JobCreated
		msgID := ev.Next(&e)
		got[e.Job.GetId()] = msgID
	}
	return got
}

func TestSweepRepublishesJobsLeftNew(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)

	stuck := storeNew(t, f, "")
	unclaimed := storeNew(t, f, "r-1") // died before claiming its request id
	// A duplicate whose request id another job won: it must be withdrawn.
	winner, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: "r-2"})
	if err != nil {
		t.Fatal(err)
	}
	announced(created, 1) // the winner's own event
	dup := storeNew(t, f, "r-2")

	later(f, time.Minute)
	sweepCtx, stop := context.WithCancel(ctx)
	swept := make(chan error, 1)
	go func() { swept <- f.srv.Sweep(sweepCtx, SweepConfig{Interval: 20 * time.Millisecond}) }()
	t.Cleanup(func() {
		stop()
		if err := <-swept; err != nil {
			t.Error(err)
		}
	})

	got := announced(created, 2)
	for _, j := range []*jobsv1.Job{stuck, unclaimed} {
		if got[j.Id] != "created-"+j.Id {
			t.Fatalf("job %s not re-published: %v", j.Id, got)
		}
	}
	testsupport.Eventually(t, 10*time.Second, "duplicate withdrawn", func() bool {
		_, _, err := f.store.Get(ctx, dup.Id)
		return errors.Is(err, jobstore.ErrNotFound)
	})
	// The request id now answers the recovered job.
	again, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: "r-1"})
	if err != nil || again.Id != unclaimed.Id {
		t.Fatalf("request r-1 = %v, %v; want %s", again, err, unclaimed.Id)
	}
	if again, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: "r-2"}); err != nil || again.Id != winner.Id {
		t.Fatalf("request r-2 = %v, %v; want %s", again, err, winner.Id)
	}
}

// A job written again after its create moved on: the sweep neither reads
// nor announces it, whether it saw the create first or only the later write.
func TestSweepLeavesJobsPastNew(t *testing.T) {
	f := setup(t)
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	w := f.srv.newSweeper(SweepConfig{})

	queued := storeNew(t, f, "")
	round(t, w) // too young yet: remembered, not read
	if _, ok := w.born[queued.Id]; !ok || w.gets != 0 {
		t.Fatalf("young job: remembered %v, %d reads", ok, w.gets)
	}
	moveOn(t, f, queued.Id, jobsv1.JobStatus_JOB_STATUS_QUEUED)
	completed := storeNew(t, f, "")
	moveOn(t, f, completed.Id, jobsv1.JobStatus_JOB_STATUS_COMPLETED)
	withdrawn := storeNew(t, f, "")
	if err := f.store.Delete(context.Background(), withdrawn.Id); err != nil {
		t.Fatal(err)
	}

	later(f, time.Minute)
	round(t, w)
	if w.gets != 0 || len(w.born) != 0 {
		t.Fatalf("jobs past NEW: %d reads, %d remembered", w.gets, len(w.born))
	}
	created.None(300 * time.Millisecond)
}

// A job NEW to the mediator that the processor has a record of (it holds
// the job's SCHEDULED back, or died holding it) is the processor's: it is
// not announced again, which past the duplicate windows would have its work
// sent twice.
func TestSweepLeavesJobsTheProcessorHas(t *testing.T) {
	f := setup(t)
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	w := f.srv.newSweeper(SweepConfig{})

	dispatched := storeNew(t, f, "")
	processorRecord(t, f, dispatched.Id, 1)
	stuck := storeNew(t, f, "")

	later(f, time.Minute)
	round(t, w)
	if got := announced(created, 1); got[stuck.Id] == "" {
		t.Fatalf("the job the processor never heard of was not announced: %v", got)
	}
	created.None(300 * time.Millisecond)
	if len(w.born) != 0 {
		t.Fatalf("%d jobs still remembered: the processor's is settled, not retried", len(w.born))
	}
}

// Each round reads only what was written since the last, however many jobs
// the bucket holds, and an announced job is not announced again.
func TestSweepReadsOnlyNewWrites(t *testing.T) {
	f := setup(t)
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	const retained = 1000
	for range retained {
		j := storeNew(t, f, "")
		moveOn(t, f, j.Id, jobsv1.JobStatus_JOB_STATUS_COMPLETED)
	}
	later(f, time.Minute)
	w := f.srv.newSweeper(SweepConfig{})

	round(t, w) // starting: the last Lookback of writes, one per job
	if w.writes != retained || w.gets != 0 {
		t.Fatalf("first round: %d writes noted, %d jobs read; want %d, 0", w.writes, w.gets, retained)
	}

	stuck := storeNew(t, f, "")
	w.writes, w.gets = 0, 0
	round(t, w)
	if w.writes != 1 || w.gets != 1 {
		t.Fatalf("one job stored since: %d writes noted, %d jobs read; want 1, 1", w.writes, w.gets)
	}
	if got := announced(created, 1); got[stuck.Id] != "created-"+stuck.Id {
		t.Fatalf("announced %v, want %s", got, stuck.Id)
	}

	w.writes, w.gets = 0, 0
	round(t, w)
	if w.writes != 0 || w.gets != 0 {
		t.Fatalf("nothing written since: %d writes noted, %d jobs read", w.writes, w.gets)
	}
	created.None(300 * time.Millisecond)
}

// The sweep remembers at most MaxPending young jobs; the rest wait in the
// bucket and are announced once there is room, none lost.
func TestSweepRemembersBoundedJobs(t *testing.T) {
	f := setup(t)
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	const maxPending, stored = 10, 25
	w := f.srv.newSweeper(SweepConfig{MaxPending: maxPending})
	want := map[string]bool{}
	for range stored {
		want[storeNew(t, f, "").Id] = true
	}

	round(t, w) // all too young
	if len(w.born) != maxPending || w.writes != maxPending {
		t.Fatalf("%d jobs stored: %d remembered after reading %d writes, want %d", stored, len(w.born), w.writes, maxPending)
	}

	later(f, time.Minute)
	round(t, w)
	got := announced(created, stored)
	for id := range want {
		if got[id] != "created-"+id {
			t.Fatalf("job %s not announced: %v", id, got)
		}
	}
	if len(w.born) != 0 {
		t.Fatalf("%d jobs still remembered", len(w.born))
	}
}

// A restarted mediator remembers nothing: its sweep reads the last Lookback
// of writes, so it heals a job left NEW that recently, not an older one.
func TestSweepStartsLookbackAgo(t *testing.T) {
	f := setup(t)
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	stuck := storeNew(t, f, "")
	later(f, time.Minute)

	short := f.srv.newSweeper(SweepConfig{Lookback: 30 * time.Second})
	round(t, short)
	if short.writes != 0 {
		t.Fatalf("a job stored a minute ago read with a lookback of 30s")
	}
	created.None(300 * time.Millisecond)

	round(t, f.srv.newSweeper(SweepConfig{}))
	if got := announced(created, 1); got[stuck.Id] != "created-"+stuck.Id {
		t.Fatalf("announced %v, want %s", got, stuck.Id)
	}
}

// createdMsgs reads the JobCreated messages of the events stream, headers
// and all, from its start.
type createdMsgs struct {
	t    *testing.T
	cons jetstream.Consumer
}

func watchCreated(t *testing.T, f *fixture) *createdMsgs {
	t.Helper()
	cons, err := f.env.JS.OrderedConsumer(context.Background(), bus.StreamEvents,
		jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.SubjectJobCreated}})
	if err != nil {
		t.Fatal(err)
	}
	return &createdMsgs{t: t, cons: cons}
}

// next returns the next message's job id and headers.
func (c *createdMsgs) next() (string, nats.Header) {
	c.t.Helper()
	msg, err := c.cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		c.t.Fatalf("no JobCreated: %v", err)
	}
	var e eventsv1.JobCreated
	if err := bus.Decode(msg.Data(), &e); err != nil {
		c.t.Fatal(err)
	}
	return e.GetJob().GetId(), msg.Headers()
}

func (c *createdMsgs) none() {
	c.t.Helper()
	if msg, err := c.cons.Next(jetstream.FetchMaxWait(300 * time.Millisecond)); err == nil {
		c.t.Fatalf("unexpected JobCreated: %s", msg.Headers().Get(jetstream.MsgIDHeader))
	}
}

// startSweep runs Sweep until the returned stop is called (or the test ends).
func startSweep(t *testing.T, f *fixture, cfg SweepConfig) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	swept := make(chan error, 1)
	go func() { swept <- f.srv.Sweep(ctx, cfg) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-swept; err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func storedCursor(t *testing.T, f *fixture) cursorPos {
	t.Helper()
	resp, err := f.env.EtcdCli.Get(context.Background(), sweepCursorKey)
	if err != nil {
		t.Fatal(err)
	}
	var p cursorPos
	if len(resp.Kvs) > 0 {
		if err := json.Unmarshal(resp.Kvs[0].Value, &p); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// The sweep's JobCreated is marked as a re-announcement, so the processor
// reads the job before acting on it; it keeps CreateJob's msg id, so a job
// CreateJob did announce is not announced twice within the duplicate window.
func TestSweepMarksReannouncements(t *testing.T) {
	f := setup(t)
	created := watchCreated(t, f)
	first, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	stuck := storeNew(t, f, "")
	later(f, time.Minute) // both still NEW and old: the sweep announces both

	round(t, f.srv.newSweeper(SweepConfig{}))
	id, h := created.next()
	if id != first.Id || h.Get(bus.HeaderReannounced) != "" {
		t.Fatalf("first JobCreated: job %s, %s=%q; want CreateJob's of %s, unmarked", id, bus.HeaderReannounced, h.Get(bus.HeaderReannounced), first.Id)
	}
	id, h = created.next()
	if id != stuck.Id || h.Get(bus.HeaderReannounced) != "true" || h.Get(jetstream.MsgIDHeader) != "created-"+stuck.Id {
		t.Fatalf("swept JobCreated: job %s, %s=%q, msg id %q; want %s, \"true\", created-%s",
			id, bus.HeaderReannounced, h.Get(bus.HeaderReannounced), h.Get(jetstream.MsgIDHeader), stuck.Id, stuck.Id)
	}
	created.none() // the re-announcement of the first was a duplicate
}

// A job stored NEW and never announced is found by a sweep started after an
// outage longer than Lookback: it resumes from the cursor kept in etcd.
func TestSweepResumesAfterLongOutage(t *testing.T) {
	f := setup(t)
	created := watchCreated(t, f)
	cfg := SweepConfig{Interval: 20 * time.Millisecond, MinAge: time.Hour, Lookback: time.Minute, Etcd: f.env.EtcdCli}

	stop := startSweep(t, f, cfg)
	stuck := storeNew(t, f, "") // too young to settle before the stop
	testsupport.Eventually(t, 10*time.Second, "sweep cursor stored", func() bool { return storedCursor(t, f).Seq > 0 })
	stop()

	later(f, 2*time.Hour) // down for longer than Lookback
	// Lookback alone does not reach the job any more.
	round(t, f.srv.newSweeper(SweepConfig{MinAge: cfg.MinAge, Lookback: cfg.Lookback}))
	created.none()

	startSweep(t, f, cfg)
	id, h := created.next()
	if id != stuck.Id || h.Get(bus.HeaderReannounced) != "true" {
		t.Fatalf("after the outage: JobCreated of %s (%s=%q), want %s", id, bus.HeaderReannounced, h.Get(bus.HeaderReannounced), stuck.Id)
	}
}

// The stored cursor never passes a job a sweeper has not handled, however far
// it has read: not while the job is young, nor while announcing it fails.
// Replicas share it, and one behind does not pull it back.
func TestSweepCursorHoldsAtPendingJob(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	cfg := SweepConfig{MinAge: time.Hour, Etcd: f.env.EtcdCli}
	w := f.srv.newSweeper(cfg)
	w.cursor.every = 0

	stuck := storeNew(t, f, "")
	for range 5 {
		j := storeNew(t, f, "")
		moveOn(t, f, j.Id, jobsv1.JobStatus_JOB_STATUS_COMPLETED)
	}
	round(t, w) // stuck is young: pending
	pending := w.born[stuck.Id].seq
	if c := storedCursor(t, f); pending == 0 || c.Seq != pending {
		t.Fatalf("young job at %d pending, read up to %d: cursor %d", pending, w.next, c.Seq)
	}

	// Announcing it fails (the events stream is gone): still pending.
	if err := f.env.JS.DeleteStream(ctx, bus.StreamEvents); err != nil {
		t.Fatal(err)
	}
	later(f, 2*time.Hour)
	round(t, w)
	if _, ok := w.born[stuck.Id]; !ok {
		t.Fatal("job whose announcement failed forgotten")
	}
	if c := storedCursor(t, f); c.Seq != pending {
		t.Fatalf("announcement failed: cursor %d, want %d", c.Seq, pending)
	}

	// Another replica, starting from the cursor, announces it and moves the
	// cursor on; the first, behind, leaves it there.
	if err := bus.Provision(ctx, f.env.JS); err != nil {
		t.Fatal(err)
	}
	created := watchCreated(t, f)
	w2 := f.srv.newSweeper(cfg)
	w2.cursor.every = 0
	round(t, w2)
	if id, _ := created.next(); id != stuck.Id {
		t.Fatalf("announced %s, want %s", id, stuck.Id)
	}
	if c := storedCursor(t, f); c.Seq != w2.next || c.Seq <= pending {
		t.Fatalf("after the announcement: cursor %d, want %d", c.Seq, w2.next)
	}
	if err := w.save(ctx, true); err != nil {
		t.Fatal(err)
	}
	if c := storedCursor(t, f); c.Seq != w2.next {
		t.Fatalf("a replica behind moved the cursor from %d to %d", w2.next, c.Seq)
	}
}
