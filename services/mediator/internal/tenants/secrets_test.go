package tenants

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// runSecrets runs w's watch until the test ends and waits until it is
// established.
func runSecrets(t *testing.T, w *WebhookSecrets) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := w.Run(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	testsupport.Eventually(t, 10*time.Second, "tenant watch established", w.synced)
}

// rotate stores a new webhook secret for tenant id the way another replica
// or an operator's tool would: straight into etcd, not through w's process.
func rotate(t *testing.T, cli *clientv3.Client, id, secret string) {
	t.Helper()
	ctx := context.Background()
	ten, err := New(cli).Tenant(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	ten.WebhookSecret = secret
	data, err := json.Marshal(ten)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, TenantPrefix+id, string(data)); err != nil {
		t.Fatal(err)
	}
}

func secretOf(t *testing.T, w *WebhookSecrets, id string) string {
	t.Helper()
	s, err := w.Secret(context.Background(), id)
	if err != nil {
		t.Fatalf("secret of %s: %v", id, err)
	}
	return s
}

// Notifications of one tenant read its secret from etcd once; a rotation or
// a deletion stored elsewhere applies once its watch event arrives, and no
// tenant is ever answered with another's secret.
func TestWebhookSecretsFollowChanges(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	store := New(env.EtcdCli)
	acme, err := store.CreateTenant(ctx, Tenant{ID: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	// An id that extends the other's: keys are exact, never prefixes.
	acme2, err := store.CreateTenant(ctx, Tenant{ID: "acme-2"})
	if err != nil {
		t.Fatal(err)
	}
	w := NewWebhookSecrets(env.EtcdCli, 0)
	now := time.Unix(1000, 0) // fixed: entries never expire, only the watch refreshes them
	w.now = func() time.Time { return now }
	runSecrets(t, w)

	before := w.reads.Load()
	for range 100 {
		if got := secretOf(t, w, "acme"); got != acme.WebhookSecret {
			t.Fatalf("acme signed with %q, want its own %q", got, acme.WebhookSecret)
		}
	}
	if n := w.reads.Load() - before; n > 1 {
		t.Fatalf("100 lookups of one tenant read etcd %d times, want at most 1", n)
	}
	if got := secretOf(t, w, "acme-2"); got != acme2.WebhookSecret || got == acme.WebhookSecret {
		t.Fatalf("acme-2 got %q, want its own %q", got, acme2.WebhookSecret)
	}

	before = w.reads.Load()
	rotate(t, env.EtcdCli, "acme", "whsec_rotated")
	testsupport.Eventually(t, 10*time.Second, "rotated secret served", func() bool {
		return secretOf(t, w, "acme") == "whsec_rotated"
	})
	if n := w.reads.Load() - before; n != 0 {
		t.Fatalf("the rotation reached the cache through %d etcd reads, want the watch alone", n)
	}
	for range 10 {
		if got := secretOf(t, w, "acme"); got != "whsec_rotated" {
			t.Fatalf("after the rotation was served, acme got %q again", got)
		}
	}
	if got := secretOf(t, w, "acme-2"); got != acme2.WebhookSecret {
		t.Fatalf("acme's rotation changed acme-2's secret to %q", got)
	}

	if err := store.DeleteTenant(ctx, "acme-2"); err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 10*time.Second, "deleted tenant refused", func() bool {
		_, err := w.Secret(ctx, "acme-2")
		return errors.Is(err, ErrTenantNotFound)
	})
	// Only the bootstrap tenant comes back under a deleted id.
	if err := store.EnsureTenant(ctx, "acme-2"); err != nil {
		t.Fatal(err)
	}
	recreated, err := store.Tenant(ctx, "acme-2")
	if err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 10*time.Second, "re-created tenant's new secret served", func() bool {
		s, err := w.Secret(ctx, "acme-2")
		return err == nil && s == recreated.WebhookSecret
	})
	if recreated.WebhookSecret == acme2.WebhookSecret {
		t.Fatal("re-created tenant kept its old secret")
	}
	if got := secretOf(t, w, "acme"); got != "whsec_rotated" {
		t.Fatalf("acme-2's deletion changed acme's secret to %q", got)
	}
}

// A read that a change overtakes is not cached: the change's event found
// nothing to update, and caching the read would serve the old secret until
// SecretTTL.
func TestWebhookSecretsReadOvertakenByChange(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	acme, err := New(env.EtcdCli).CreateTenant(ctx, Tenant{ID: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	w := NewWebhookSecrets(env.EtcdCli, 0)
	now := time.Unix(1000, 0)
	w.now = func() time.Time { return now }
	runSecrets(t, w)

	w.afterRead = func() {
		w.afterRead = nil
		rotate(t, env.EtcdCli, "acme", "whsec_rotated")
		resp, err := env.EtcdCli.Get(ctx, TenantPrefix+"acme")
		if err != nil {
			t.Error(err)
			return
		}
		rev := resp.Kvs[0].ModRevision
		testsupport.Eventually(t, 10*time.Second, "rotation's event applied", func() bool {
			w.mu.Lock()
			defer w.mu.Unlock()
			return w.lastRev >= rev
		})
	}
	if got := secretOf(t, w, "acme"); got != acme.WebhookSecret {
		t.Fatalf("read begun before the rotation got %q, want the old secret", got)
	}
	if got := secretOf(t, w, "acme"); got != "whsec_rotated" {
		t.Fatalf("lookup after the rotation's event got %q", got)
	}
}

// Without a watch (not started, or failed) every lookup reads etcd, so a
// rotation applies to the very next lookup.
func TestWebhookSecretsWithoutWatchReadEtcd(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	if _, err := New(env.EtcdCli).CreateTenant(ctx, Tenant{ID: "acme"}); err != nil {
		t.Fatal(err)
	}
	w := NewWebhookSecrets(env.EtcdCli, 0)
	secretOf(t, w, "acme")
	rotate(t, env.EtcdCli, "acme", "whsec_rotated")
	if got := secretOf(t, w, "acme"); got != "whsec_rotated" {
		t.Fatalf("lookup after the rotation got %q", got)
	}
	if _, err := w.Secret(ctx, "nobody"); !errors.Is(err, ErrTenantNotFound) {
		t.Fatalf("missing tenant: %v", err)
	}
	before := w.reads.Load()
	if _, err := w.Secret(ctx, "../acme"); !errors.Is(err, ErrTenantNotFound) {
		t.Fatalf("invalid tenant id: %v", err)
	}
	if w.reads.Load() != before {
		t.Fatal("an invalid tenant id was looked up in etcd")
	}
}

// A cached secret is read again after SecretTTL, which bounds its staleness
// even if the watch stalls without failing.
func TestWebhookSecretsExpire(t *testing.T) {
	env := testsupport.Start(t)
	if _, err := New(env.EtcdCli).CreateTenant(context.Background(), Tenant{ID: "acme"}); err != nil {
		t.Fatal(err)
	}
	w := NewWebhookSecrets(env.EtcdCli, 0)
	now := time.Unix(1000, 0)
	w.now = func() time.Time { return now }
	runSecrets(t, w)

	secretOf(t, w, "acme")
	before := w.reads.Load()
	now = now.Add(SecretTTL - time.Millisecond)
	secretOf(t, w, "acme")
	if w.reads.Load() != before {
		t.Fatal("read again within SecretTTL")
	}
	now = now.Add(time.Millisecond)
	secretOf(t, w, "acme")
	if w.reads.Load() != before+1 {
		t.Fatal("not read again after SecretTTL")
	}
}

// The cache holds at most its bound; evicted tenants are read again, each
// with its own secret, including one rotated while it was not cached.
func TestWebhookSecretsBound(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	store := New(env.EtcdCli)
	var ids []string
	want := map[string]string{}
	for i := range 5 {
		ten, err := store.CreateTenant(ctx, Tenant{ID: fmt.Sprintf("t%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, ten.ID)
		want[ten.ID] = ten.WebhookSecret
	}
	w := NewWebhookSecrets(env.EtcdCli, 2)
	runSecrets(t, w)
	for range 3 {
		for _, id := range ids {
			if got := secretOf(t, w, id); got != want[id] {
				t.Fatalf("%s got %q, want %q", id, got, want[id])
			}
		}
		w.mu.Lock()
		n := w.cache.Len()
		w.mu.Unlock()
		if n > 2 {
			t.Fatalf("cache holds %d secrets, bound 2", n)
		}
	}
	// t0 was evicted by the later tenants; its rotation must still be seen.
	rotate(t, env.EtcdCli, "t0", "whsec_rotated")
	if got := secretOf(t, w, "t0"); got != "whsec_rotated" {
		t.Fatalf("evicted tenant's rotation: got %q", got)
	}
}

// BenchmarkWebhookSecret compares a lookup served by the watched cache with
// one read from etcd (no watch), the cost of each notification before.
func BenchmarkWebhookSecret(b *testing.B) {
	env := testsupport.Start(b)
	if _, err := New(env.EtcdCli).CreateTenant(context.Background(), Tenant{ID: "acme"}); err != nil {
		b.Fatal(err)
	}
	for _, watched := range []bool{true, false} {
		b.Run(fmt.Sprintf("watched=%v", watched), func(b *testing.B) {
			w := NewWebhookSecrets(env.EtcdCli, 0)
			if watched {
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() {
					defer close(done)
					_ = w.Run(ctx)
				}()
				defer func() {
					cancel()
					<-done
				}()
				testsupport.Eventually(b, 10*time.Second, "tenant watch established", w.synced)
			}
			ctx := context.Background()
			before := w.reads.Load()
			for b.Loop() {
				if _, err := w.Secret(ctx, "acme"); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(w.reads.Load()-before)/float64(b.N), "etcd-reads/op")
		})
	}
}
