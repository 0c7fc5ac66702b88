package jobapi

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
