package jobstore

import (
	"context"
	"errors"
	"strings"
	"testing"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
)

const (
	statusNew     = jobsv1.JobStatus_JOB_STATUS_NEW
	statusQueued  = jobsv1.JobStatus_JOB_STATUS_QUEUED
	statusRunning = jobsv1.JobStatus_JOB_STATUS_RUNNING
	statusFailed  = jobsv1.JobStatus_JOB_STATUS_FAILED
)

func newJob(t *testing.T, store *Store) (*jobsv1.Job, uint64) {
	t.Helper()
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	job := &jobsv1.Job{Id: id, Tenant: "acme", Status: statusNew}
	rev, err := store.Create(context.Background(), job)
	if err != nil {
		t.Fatal(err)
	}
	return job, rev
}

// GetCached serves what this process last wrote, without a read, and a
// change made elsewhere is caught by the compare-and-set on the cached
// revision, after which the stored record is read again.
func TestGetCached(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	here, elsewhere := New(env.Jobs), New(env.Jobs) // two mediator replicas

	job, rev := newJob(t, here)
	got, grev, cached, err := here.GetCached(ctx, job.GetId())
	if err != nil || !cached || grev != rev || got.GetStatus() != statusNew {
		t.Fatalf("after Create: %v rev %d (want %d) cached %v err %v", got, grev, rev, cached, err)
	}
	got.Status = statusQueued
	if rev, err = here.Update(ctx, got, rev); err != nil {
		t.Fatal(err)
	}
	got, grev, cached, err = here.GetCached(ctx, job.GetId())
	if err != nil || !cached || grev != rev || got.GetStatus() != statusQueued {
		t.Fatalf("after Update: %v rev %d (want %d) cached %v err %v", got, grev, rev, cached, err)
	}
	// A job this replica never read: read from the bucket.
	if _, _, cached, err := elsewhere.GetCached(ctx, job.GetId()); err != nil || cached {
		t.Fatalf("other replica: cached %v err %v", cached, err)
	}

	// The other replica moves the job on; this one still remembers QUEUED.
	moved, mrev, err := elsewhere.Get(ctx, job.GetId())
	if err != nil {
		t.Fatal(err)
	}
	moved.Status, moved.Progress = statusRunning, 40
	if _, err := elsewhere.Update(ctx, moved, mrev); err != nil {
		t.Fatal(err)
	}
	stale, srev, cached, err := here.GetCached(ctx, job.GetId())
	if err != nil || !cached || stale.GetStatus() != statusQueued {
		t.Fatalf("stale entry: %v cached %v err %v", stale, cached, err)
	}
	stale.Progress = 10
	if _, err := here.Update(ctx, stale, srev); !errors.Is(err, ErrConflict) {
		t.Fatalf("update of a stale record = %v, want ErrConflict", err)
	}
	got, _, cached, err = here.GetCached(ctx, job.GetId())
	if err != nil || cached || got.GetStatus() != statusRunning || got.GetProgress() != 40 {
		t.Fatalf("after the conflict: %v cached %v err %v, want the stored RUNNING 40", got, cached, err)
	}
}

// A finished job is not kept (its record no longer changes), and a deleted
// one is forgotten.
func TestGetCachedForgetsEndedAndDeletedJobs(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	store := New(env.Jobs)

	job, rev := newJob(t, store)
	job.Status = statusFailed
	if _, err := store.Update(ctx, job, rev); err != nil {
		t.Fatal(err)
	}
	got, _, cached, err := store.GetCached(ctx, job.GetId())
	if err != nil || cached || got.GetStatus() != statusFailed {
		t.Fatalf("ended job: %v cached %v err %v", got, cached, err)
	}
	if _, _, cached, _ := store.GetCached(ctx, job.GetId()); cached {
		t.Fatal("ended job cached after a read")
	}

	job, _ = newJob(t, store)
	if err := store.Delete(ctx, job.GetId()); err != nil {
		t.Fatal(err)
	}
	if _, _, cached, err := store.GetCached(ctx, job.GetId()); !errors.Is(err, ErrNotFound) || cached {
		t.Fatalf("deleted job: cached %v err %v, want ErrNotFound", cached, err)
	}
}

// A record too large to be worth its room (a big input) is not cached: it
// is read again each time. (The cache's own bounds: package revcache.)
func TestLargeRecordNotCached(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	store := New(env.Jobs)
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	big := &jobsv1.Job{Id: id, Tenant: "acme", Status: statusNew, Tags: map[string]string{"notes": strings.Repeat("x", cacheMaxRecord)}}
	if _, err := store.Create(ctx, big); err != nil {
		t.Fatal(err)
	}
	got, _, cached, err := store.GetCached(ctx, id)
	if err != nil || cached || len(got.GetTags()["notes"]) != cacheMaxRecord {
		t.Fatalf("large record: cached %v err %v", cached, err)
	}
	small, _ := newJob(t, store)
	if _, _, cached, err := store.GetCached(ctx, small.GetId()); err != nil || !cached {
		t.Fatalf("small record: cached %v err %v, want cached", cached, err)
	}
}
