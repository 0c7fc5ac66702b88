package jobstore

import (
	"context"
	"errors"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
)

// CreateAsync stores what Create stores: a record Get reads and GetCached
// serves without a read, written as a create (the sweep announces records by
// it), and refused with ErrExists when the id is taken.
func TestCreateAsync(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	store := New(env.Jobs)
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	job := &jobsv1.Job{Id: id, Tenant: "acme", Status: statusNew, Tags: map[string]string{"a": "1"}}

	pending, err := store.CreateAsync(env.JS, job)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := pending.Wait(ctx)
	if err != nil || rev == 0 {
		t.Fatalf("Wait = %d, %v", rev, err)
	}
	if got, grev, cached, err := store.GetCached(ctx, id); err != nil || !cached || grev != rev || got.GetTenant() != "acme" {
		t.Fatalf("GetCached after the create = %v rev %d (want %d) cached %v, %v", got, grev, rev, cached, err)
	}
	if got, grev, err := New(env.Jobs).Get(ctx, id); err != nil || grev != rev || got.GetTags()["a"] != "1" {
		t.Fatalf("stored = %v rev %d (want %d), %v", got, grev, rev, err)
	}
	creates := 0
	if _, err := store.ReadWrites(ctx, env.JS, 0, time.Now().Add(-time.Minute), 10, func(w Write) bool {
		if w.ID == id && w.MaybeCreate {
			creates++
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if creates != 1 {
		t.Fatalf("the write read as a create %d times, want 1", creates)
	}

	other := &jobsv1.Job{Id: id, Tenant: "globex", Status: statusNew}
	if pending, err = store.CreateAsync(env.JS, other); err != nil {
		t.Fatal(err)
	}
	if _, err := pending.Wait(ctx); !errors.Is(err, ErrExists) {
		t.Fatalf("create over a taken id: %v, want ErrExists", err)
	}
	if _, err := store.Create(ctx, other); !errors.Is(err, ErrExists) {
		t.Fatalf("Create over a taken id: %v, want ErrExists", err)
	}
	if got, _, err := store.Get(ctx, id); err != nil || got.GetTenant() != "acme" {
		t.Fatalf("record after the refused creates = %v, %v", got, err)
	}
}
