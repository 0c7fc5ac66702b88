package webhook_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"github.com/medius-platform/medius/services/mediator/internal/webhook"
)

// receiver records the signature headers and body of each POST.
type receiver struct {
	*httptest.Server
	mu    sync.Mutex
	posts []post
}

type post struct {
	ts, sig string
	body    []byte
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.posts = append(r.posts, post{req.Header.Get(webhook.HeaderTimestamp), req.Header.Get(webhook.HeaderSignature), body})
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) last(t *testing.T) post {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.posts) == 0 {
		t.Fatal("no notification received")
	}
	return r.posts[len(r.posts)-1]
}

func (p post) signedWith(secret string) bool { return webhook.Verify(secret, p.ts, p.sig, p.body) }

// Each tenant's notifications are signed with its own secret, also while
// another tenant's secret rotates, and a rotation stored in etcd signs the
// notifications after it reached the mediator.
func TestDeliverSignsWithTheTenantsCurrentSecret(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	store := tenants.New(env.EtcdCli)
	acme, err := store.CreateTenant(ctx, tenants.Tenant{ID: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	beta, err := store.CreateTenant(ctx, tenants.Tenant{ID: "beta"})
	if err != nil {
		t.Fatal(err)
	}
	secrets := tenants.NewWebhookSecrets(env.EtcdCli, 0)
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = secrets.Run(wctx)
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	recv := newReceiver(t)
	n := webhook.New(env.JS, webhook.Config{AllowPrivate: true}, secrets.Secret, nil)
	deliver := func(tenant string) post {
		t.Helper()
		job := &jobsv1.Job{Id: "job-" + tenant, Tenant: tenant, NotificationEndpoint: recv.URL + "/hook"}
		if err := n.Deliver(ctx, job, "ev-"+tenant); err != nil {
			t.Fatalf("deliver %s: %v", tenant, err)
		}
		p := recv.last(t)
		var got struct{ Tenant string }
		if err := json.Unmarshal(p.body, &got); err != nil || got.Tenant != tenant {
			t.Fatalf("body %s, want tenant %s", p.body, tenant)
		}
		return p
	}
	check := func(tenant, own, other string) {
		t.Helper()
		p := deliver(tenant)
		if !p.signedWith(own) || p.signedWith(other) {
			t.Fatalf("%s's notification not signed with its own secret only", tenant)
		}
	}

	for range 3 {
		check("acme", acme.WebhookSecret, beta.WebhookSecret)
		check("beta", beta.WebhookSecret, acme.WebhookSecret)
	}

	rotated := acme
	rotated.WebhookSecret = "whsec_rotated"
	data, err := json.Marshal(rotated)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.EtcdCli.Put(ctx, tenants.TenantPrefix+"acme", string(data)); err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 10*time.Second, "notification signed with the rotated secret", func() bool {
		return deliver("acme").signedWith("whsec_rotated")
	})
	check("acme", "whsec_rotated", acme.WebhookSecret)
	check("beta", beta.WebhookSecret, "whsec_rotated")
}

// A notification is never signed with an empty secret: it fails (to be
// retried) and nothing is posted.
func TestDeliverRefusesAnEmptySecret(t *testing.T) {
	env := testsupport.Start(t)
	recv := newReceiver(t)
	n := webhook.New(env.JS, webhook.Config{AllowPrivate: true},
		func(context.Context, string) (string, error) { return "", nil }, nil)
	job := &jobsv1.Job{Id: "j", Tenant: "acme", NotificationEndpoint: recv.URL + "/hook"}
	if err := n.Deliver(context.Background(), job, "ev"); err == nil {
		t.Fatal("delivered with an empty secret")
	}
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if len(recv.posts) != 0 {
		t.Fatalf("%d notifications posted unsigned", len(recv.posts))
	}
}
