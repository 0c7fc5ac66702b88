package tenants_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"github.com/medius-platform/medius/services/mediator/internal/restapi"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
)

// A rotation through the admin REST API reaches the webhook secret cache
// the notifier signs with through its watch: the next notifications are
// signed with the new secret, though the old one was cached and never
// expires here.
func TestRESTRotationReachesWebhookSecrets(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	store := tenants.New(env.EtcdCli)
	acme, err := store.CreateTenant(ctx, tenants.Tenant{ID: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	const adminKey = "admin-key-for-rotation-tests-01"
	mux := http.NewServeMux()
	(&restapi.API{Authn: auth.NewAuthenticator(auth.NewEtcdKeys(env.EtcdCli), auth.WithAdminKey(adminKey)), Tenants: store}).Mount(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	w := tenants.NewWebhookSecrets(env.EtcdCli, 0)
	now := time.Unix(1000, 0) // fixed: entries never expire, only the watch refreshes them
	w.SetClock(func() time.Time { return now })
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := w.Run(wctx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	testsupport.Eventually(t, 10*time.Second, "tenant watch established", w.Synced)
	secret := func() string {
		t.Helper()
		s, err := w.Secret(ctx, "acme")
		if err != nil {
			t.Fatalf("secret of acme: %v", err)
		}
		return s
	}
	if got := secret(); got != acme.WebhookSecret {
		t.Fatalf("secret before the rotation %q, want %q", got, acme.WebhookSecret)
	}

	var rotated tenants.Tenant
	resp, body := testsupport.HTTP(t, "POST", srv.URL+"/v1/tenants/acme/webhook-secret:rotate", testsupport.Bearer(adminKey), "", &rotated)
	if resp.StatusCode != http.StatusOK || rotated.WebhookSecret == "" || rotated.WebhookSecret == acme.WebhookSecret {
		t.Fatalf("rotate: %d %s, want the tenant with a new secret", resp.StatusCode, body)
	}

	reads := w.EtcdReads()
	testsupport.Eventually(t, 10*time.Second, "rotated secret served", func() bool { return secret() == rotated.WebhookSecret })
	if n := w.EtcdReads() - reads; n != 0 {
		t.Fatalf("the rotation reached the cache through %d etcd reads, want the watch alone", n)
	}
}
