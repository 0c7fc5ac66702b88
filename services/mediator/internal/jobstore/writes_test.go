package jobstore

import (
	"context"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
)

// ReadWrites tells a record still as created from one written since, reads
// each record once at its latest write, skips the idempotency records, and
// from the position it returns reads only what was written after.
func TestReadWrites(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	store := New(env.Jobs)
	read := func(from uint64, since time.Time, limit int) (map[string]Write, []string, uint64) {
		t.Helper()
		got := map[string]Write{}
		var order []string
		next, err := store.ReadWrites(ctx, env.JS, from, since, limit, func(w Write) bool {
			got[w.ID] = w
			order = append(order, w.ID)
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
		return got, order, next
	}

	fresh, _ := newJob(t, store)
	moved, rev := newJob(t, store)
	moved.Status = statusQueued
	if _, err := store.Update(ctx, moved, rev); err != nil {
		t.Fatal(err)
	}
	gone, _ := newJob(t, store)
	if err := store.Delete(ctx, gone.GetId()); err != nil {
		t.Fatal(err)
	}
	if _, err := store.ClaimRequest(ctx, "acme", "r-1", fresh.GetId()); err != nil {
		t.Fatal(err)
	}

	got, order, next := read(0, time.Now().Add(-time.Minute), 100)
	if len(order) != 3 {
		t.Fatalf("read %v, want each of the 3 records once", order)
	}
	if w := got[fresh.GetId()]; !w.MaybeCreate || w.Time.IsZero() || w.Seq == 0 {
		t.Fatalf("record as created: %+v", w)
	}
	if got[moved.GetId()].MaybeCreate || got[gone.GetId()].MaybeCreate {
		t.Fatalf("an update or a delete read as a possible create: %+v", got)
	}

	if got, _, again := read(next, time.Time{}, 100); len(got) != 0 || again != next {
		t.Fatalf("nothing written, yet read %v, next %d (was %d)", got, again, next)
	}
	later, _ := newJob(t, store)
	got, _, _ = read(next, time.Time{}, 100)
	if len(got) != 1 || !got[later.GetId()].MaybeCreate {
		t.Fatalf("after one more create, read %+v", got)
	}

	// A start time after the writes reads none of them.
	if got, _, _ := read(0, time.Now().Add(time.Minute), 100); len(got) != 0 {
		t.Fatalf("read %v written before the start time", got)
	}

	// A limit, or fn refusing a write, leaves the rest for the next call,
	// from the position returned.
	_, first, n1 := read(0, time.Now().Add(-time.Minute), 2)
	restW, rest, _ := read(n1, time.Time{}, 100)
	if len(first) != 2 || len(rest) != 2 || rest[0] == first[1] {
		t.Fatalf("limit 2: read %v then %v", first, rest)
	}
	stopAt, err := store.ReadWrites(ctx, env.JS, n1, time.Time{}, 100, func(Write) bool { return false })
	if err != nil || stopAt != restW[rest[0]].Seq {
		t.Fatalf("refused write: next %d, %v", stopAt, err)
	}
	_, again, _ := read(stopAt, time.Time{}, 100)
	if len(again) != 2 || again[0] != rest[0] {
		t.Fatalf("after a refusal, read %v, want %v", again, rest)
	}
}

// A bucket lost and made again starts its sequences anew: a position taken
// before is ahead of it, and reading from it reads the new stream from its
// start rather than nothing until the sequences catch up.
func TestReadWritesAfterBucketRecreated(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	store := New(env.Jobs)
	for range 3 {
		newJob(t, store)
	}
	next, err := store.ReadWrites(ctx, env.JS, 0, time.Now().Add(-time.Minute), 100, func(Write) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	if err := env.JS.DeleteKeyValue(ctx, bus.BucketJobs); err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(ctx, env.JS); err != nil {
		t.Fatal(err)
	}
	job, _ := newJob(t, store)
	var got []string
	if _, err := store.ReadWrites(ctx, env.JS, next, time.Time{}, 100, func(w Write) bool {
		got = append(got, w.ID)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != job.GetId() {
		t.Fatalf("read %v from the new bucket, want %s", got, job.GetId())
	}
}
