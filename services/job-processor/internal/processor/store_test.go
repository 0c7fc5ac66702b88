package processor

import (
	"context"
	"errors"
	"github.com/medius-platform/medius/pkg/jobstate"
	"sync"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/services/job-processor/internal/record"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// bucket starts NATS and returns the executions bucket.
func bucket(t *testing.T) (context.Context, jetstream.KeyValue) {
	t.Helper()
	n, err := devenv.StartNATS(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	nc, js, err := bus.Connect(n.URL, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := bus.Provision(ctx, js); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, bus.BucketExecutions)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, kv
}

// writeBehind writes rec as another replica would, unseen by this one's cache.
func writeBehind(t *testing.T, ctx context.Context, kv jetstream.KeyValue, rec *jobsv1.Job) {
	t.Helper()
	data, err := proto.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, rec.GetId(), data); err != nil {
		t.Fatal(err)
	}
}

func readRecord(t *testing.T, ctx context.Context, kv jetstream.KeyValue, id string) *jobsv1.Job {
	t.Helper()
	rec, _, err := newStore(kv).get(ctx, id)
	if err != nil || rec == nil {
		t.Fatalf("record %s: %v, %v", id, rec, err)
	}
	return rec
}

// scheduled is a job's record as the fast path creates it.
func scheduled(id string) *jobsv1.Job {
	now := time.Now()
	rec := record.New(&jobsv1.Job{Id: id, Tenant: "t1", Profile: "P", CreateTime: timestamppb.New(now)}, now)
	record.Schedule(rec, "probe", now)
	return rec
}

// A report that the remembered record calls stale (an old attempt) is judged
// again on the record as it is: another replica moved the job to attempt 2
// meanwhile, so the report applies and is written.
func TestStoreStaleCacheIgnoredIsRejudged(t *testing.T) {
	ctx, kv := bucket(t)
	s := newStore(kv)
	rec := scheduled("job-s")
	if err := s.create(ctx, "job-s", rec); err != nil {
		t.Fatal(err)
	}
	moved := proto.CloneOf(rec)
	record.Reroute(moved, 1, "probe", "probe-premium", time.Now())
	writeBehind(t, ctx, kv, moved)

	running := &eventsv1.ExecutionUpdate{JobId: "job-s", Attempt: 2, Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, InstanceId: "premium-1"}
	var judged []int
	got, outcome, err := s.update(ctx, "job-s", func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		judged = append(judged, len(rec.GetExecutions()))
		return rec, record.Apply(rec, running, time.Now()), nil
	})
	if err != nil || outcome != record.Applied {
		t.Fatalf("update = %v, %v (judged on records of %v executions); want applied", outcome, err, judged)
	}
	if got.GetStatus() != jobsv1.JobStatus_JOB_STATUS_RUNNING || len(got.GetExecutions()) != 2 {
		t.Fatalf("returned record %v", got)
	}
	if stored := readRecord(t, ctx, kv, "job-s"); stored.GetStatus() != jobsv1.JobStatus_JOB_STATUS_RUNNING ||
		jobstate.Current(stored).GetAttempt() != 2 || jobstate.Current(stored).GetInstanceId() != "premium-1" {
		t.Fatalf("stored record %v: the report was dropped", stored)
	}
}

// A change the remembered record accepts but the record as it is refuses is
// not written: the compare-and-set on the remembered revision fails, and the
// change, judged again, is ignored. A terminal record stays as it ended.
func TestStoreStaleCacheAppliedIsVerified(t *testing.T) {
	ctx, kv := bucket(t)
	s := newStore(kv)
	rec := scheduled("job-v")
	if err := s.create(ctx, "job-v", rec); err != nil {
		t.Fatal(err)
	}
	canceled := proto.CloneOf(rec)
	record.Cancel(canceled, time.Now())
	writeBehind(t, ctx, kv, canceled)

	done := &eventsv1.ExecutionUpdate{JobId: "job-v", Attempt: 1, Status: jobsv1.JobStatus_JOB_STATUS_COMPLETED, Progress: 100}
	_, outcome, err := s.update(ctx, "job-v", func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		return rec, record.Apply(rec, done, time.Now()), nil
	})
	if err != nil || outcome != record.Ignored {
		t.Fatalf("update = %v, %v; want ignored", outcome, err)
	}
	if stored := readRecord(t, ctx, kv, "job-v"); stored.GetStatus() != jobsv1.JobStatus_JOB_STATUS_CANCELED {
		t.Fatalf("canceled job moved to %v", stored.GetStatus())
	}
	// The next change starts from the record as it is, not the stale one.
	restarted := 0
	_, outcome, err = s.update(ctx, "job-v", func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		restarted++
		return rec, record.Restart(rec, 1, time.Now()), nil
	})
	if err != nil || outcome != record.Applied || restarted != 1 {
		t.Fatalf("restart = %v, %v after %d judgements; want applied at once", outcome, err, restarted)
	}
}

// Creating a record that exists fails with ErrKeyExists and leaves it as it
// was: it is the fast path's only existence check.
func TestStoreCreateExisting(t *testing.T) {
	ctx, kv := bucket(t)
	running := scheduled("job-e")
	record.Apply(running, &eventsv1.ExecutionUpdate{JobId: "job-e", Attempt: 1, Status: jobsv1.JobStatus_JOB_STATUS_RUNNING}, time.Now())
	writeBehind(t, ctx, kv, running)

	s := newStore(kv)
	if err := s.create(ctx, "job-e", scheduled("job-e")); !errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatalf("create over an existing record: %v, want ErrKeyExists", err)
	}
	if stored := readRecord(t, ctx, kv, "job-e"); !proto.Equal(stored, running) {
		t.Fatalf("record changed to %v", stored)
	}
	// Nor does the failed create leave its record in the cache for updates.
	_, outcome, err := s.update(ctx, "job-e", func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		return rec, record.Apply(rec, &eventsv1.ExecutionUpdate{JobId: "job-e", Attempt: 1, Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, Progress: 50}, time.Now()), nil
	})
	if err != nil || outcome != record.Applied {
		t.Fatalf("progress on the existing record = %v, %v", outcome, err)
	}
	if stored := readRecord(t, ctx, kv, "job-e"); stored.GetProgress() != 50 || stored.GetStatus() != jobsv1.JobStatus_JOB_STATUS_RUNNING {
		t.Fatalf("record after progress = %v", stored)
	}
}

// Concurrent writers of one record (replicas handling events of the same
// job, and several events of it at once in each replica) never lose each
// other's changes: each replica's remembered record goes stale as the others
// write, and each conflict reloads and re-applies.
func TestStoreUpdateConcurrent(t *testing.T) {
	ctx, kv := bucket(t)

	// Each writer adds executions; the first one to write creates the record.
	const replicas, writersEach, each = 4, 2, 10
	const writers = replicas * writersEach
	var wg sync.WaitGroup
	for range replicas {
		s := newStore(kv)
		for range writersEach {
			wg.Go(func() {
				for range each {
					for {
						_, _, err := s.update(ctx, "job-c", func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
							if rec == nil {
								rec = &jobsv1.Job{Id: "job-c"}
							}
							rec.Executions = append(rec.Executions, &jobsv1.Execution{Attempt: record.NextAttempt(rec)})
							return rec, record.Applied, nil
						})
						if err == nil {
							break
						}
						// Out of conflict retries: as a redelivery would, try again.
						if ctx.Err() != nil {
							t.Error(err)
							return
						}
					}
				}
			})
		}
	}
	wg.Wait()
	rec, _, err := newStore(kv).get(ctx, "job-c")
	if err != nil {
		t.Fatal(err)
	}
	if got := len(rec.GetExecutions()); got != writers*each {
		t.Fatalf("%d executions, want %d: updates were lost", got, writers*each)
	}
	for i, ex := range rec.Executions {
		if ex.Attempt != int32(i+1) {
			t.Fatalf("execution %d has attempt %d", i, ex.Attempt)
		}
	}
}
