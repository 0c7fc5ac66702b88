package tenants

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
)

// Admission reads quotas from a cache: a change through the same Store
// applies at once, one through another Store (another mediator replica)
// once QuotaTTL has passed.
func TestQuotaCache(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	now := time.Unix(1000, 0)
	s := New(env.EtcdCli)
	s.now = func() time.Time { return now }
	replica := New(env.EtcdCli)

	if _, err := s.Quota(ctx, "acme"); !errors.Is(err, ErrTenantNotFound) {
		t.Fatalf("quota of a missing tenant: %v", err)
	}
	if _, err := s.CreateTenant(ctx, Tenant{ID: "acme", Quota: Quota{MaxConcurrentJobs: 1}}); err != nil {
		t.Fatal(err)
	}
	if q, err := s.Quota(ctx, "acme"); err != nil || q.MaxConcurrentJobs != 1 {
		t.Fatalf("quota of a tenant just created: %+v, %v", q, err)
	}
	if _, err := s.SetQuota(ctx, "acme", Quota{MaxConcurrentJobs: 2}); err != nil {
		t.Fatal(err)
	}
	if q, err := s.Quota(ctx, "acme"); err != nil || q.MaxConcurrentJobs != 2 {
		t.Fatalf("quota just set through the same store: %+v, %v", q, err)
	}

	if _, err := replica.SetQuota(ctx, "acme", Quota{MaxConcurrentJobs: 3}); err != nil {
		t.Fatal(err)
	}
	if q, _ := s.Quota(ctx, "acme"); q.MaxConcurrentJobs != 2 {
		t.Fatalf("within the TTL the cached quota serves, got %+v", q)
	}
	now = now.Add(QuotaTTL)
	if q, err := s.Quota(ctx, "acme"); err != nil || q.MaxConcurrentJobs != 3 {
		t.Fatalf("another replica's quota after the TTL: %+v, %v", q, err)
	}

	if err := s.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Quota(ctx, "acme"); !errors.Is(err, ErrTenantNotFound) {
		t.Fatalf("quota of a tenant just deleted: %v", err)
	}
	// Its jobs and usage stay under its id: no new tenant takes it, but
	// the bootstrap tenant, which the configuration names, comes back.
	if _, err := s.CreateTenant(ctx, Tenant{ID: "acme"}); !errors.Is(err, ErrTenantRetired) {
		t.Fatalf("a new tenant under a deleted one's id: %v, want ErrTenantRetired", err)
	}
	if _, err := s.CreateTenant(ctx, Tenant{ID: "acme-2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateTenant(ctx, Tenant{ID: "acme-2"}); !errors.Is(err, ErrTenantExists) {
		t.Fatalf("a tenant created twice: %v, want ErrTenantExists", err)
	}
	if err := s.EnsureTenant(ctx, "acme"); err != nil {
		t.Fatalf("bootstrap of a deleted tenant: %v", err)
	}
	if _, err := s.Tenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
}

// A rotation and quota changes made at the same time (two admins, two
// replicas) each keep the other's: every write is a compare-and-set on the
// record's revision, so neither puts back a field the other just changed.
func TestRotateWebhookSecretKeepsConcurrentChanges(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	s, replica := New(env.EtcdCli), New(env.EtcdCli)
	orig, err := s.CreateTenant(ctx, Tenant{ID: "acme", DisplayName: "Acme"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateWebhookSecret(ctx, "nope"); !errors.Is(err, ErrTenantNotFound) {
		t.Fatalf("rotating a missing tenant: %v, want ErrTenantNotFound", err)
	}

	const n = 30
	var lastSecret string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range n {
			r, err := replica.RotateWebhookSecret(ctx, "acme")
			if err != nil {
				t.Errorf("rotate: %v", err)
				return
			}
			lastSecret = r.WebhookSecret
		}
	}()
	for i := range n {
		if _, err := s.SetQuota(ctx, "acme", Quota{MaxConcurrentJobs: int64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()

	got, err := s.Tenant(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if got.Quota.MaxConcurrentJobs != n {
		t.Errorf("quota after concurrent rotations: %+v, want the last one set (%d)", got.Quota, n)
	}
	if got.WebhookSecret != lastSecret || got.WebhookSecret == orig.WebhookSecret {
		t.Errorf("secret after concurrent quota changes %q, want the last one rotated %q", got.WebhookSecret, lastSecret)
	}
	if got.DisplayName != orig.DisplayName || !got.CreateTime.Equal(orig.CreateTime) {
		t.Errorf("rotations changed the tenant's name or creation time: %+v, was %+v", got, orig)
	}
}
