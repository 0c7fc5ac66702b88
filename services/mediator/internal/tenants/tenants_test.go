package tenants

import (
	"context"
	"errors"
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
}
