package restapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
)

const adminKey = "admin-key-for-restapi-tests-0123"

// bundle is the tenant REST API served over HTTP, on real etcd.
type bundle struct {
	t     *testing.T
	url   string
	store *tenants.Store
}

func setup(t *testing.T) *bundle {
	t.Helper()
	env := testsupport.Start(t)
	store := tenants.New(env.EtcdCli)
	a := &API{
		Authn:   auth.NewAuthenticator(auth.NewEtcdKeys(env.EtcdCli), auth.WithAdminKey(adminKey)),
		Tenants: store,
	}
	mux := http.NewServeMux()
	a.Mount(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &bundle{t: t, url: srv.URL, store: store}
}

// do sends body (when not empty) with key as bearer credential and decodes
// a 2xx JSON answer into out (when not nil).
func (b *bundle) do(method, path, key, body string, out any) (*http.Response, []byte) {
	b.t.Helper()
	return testsupport.HTTP(b.t, method, b.url+path, testsupport.Bearer(key), body, out)
}

// wantProblem checks an answer is problem JSON of status and type.
func (b *bundle) wantProblem(what string, resp *http.Response, body []byte, status int, typ string) {
	b.t.Helper()
	var p struct {
		Type   string `json:"type"`
		Status int    `json:"status"`
	}
	if resp.StatusCode != status || resp.Header.Get("Content-Type") != problem.ContentType ||
		json.Unmarshal(body, &p) != nil || p.Status != status || p.Type != problem.TypePrefix+typ {
		b.t.Fatalf("%s: %d %s %s, want problem %d %s", what, resp.StatusCode, resp.Header.Get("Content-Type"), body, status, typ)
	}
}

const rotatePath = "/v1/tenants/acme/webhook-secret:rotate"

// Rotating a tenant's webhook secret gives it a new one, shown in the
// answer and from then on by GET, and changes nothing else: its quota, name,
// creation time and API keys stay as they were.
func TestRotateWebhookSecret(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	before, err := b.store.CreateTenant(ctx, tenants.Tenant{ID: "acme", DisplayName: "Acme",
		Quota: tenants.Quota{MaxConcurrentJobs: 3, MaxJobsPerPeriod: 100, MaxQuantityPerPeriod: 3600, Period: tenants.PeriodDay}})
	if err != nil {
		t.Fatal(err)
	}
	key, keySecret, err := b.store.NewKey(ctx, "acme", "ci")
	if err != nil {
		t.Fatal(err)
	}

	seen := map[string]bool{before.WebhookSecret: true}
	for i, body := range []string{"", "{}"} { // no body, or an empty request
		var got tenants.Tenant
		resp, data := b.do("POST", rotatePath, adminKey, body, &got)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("rotation %d: %d %s", i+1, resp.StatusCode, data)
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("rotation %d: the answer holds a secret, Cache-Control %q, want no-store", i+1, cc)
		}
		if !strings.HasPrefix(got.WebhookSecret, "whsec_") || len(got.WebhookSecret) != len(before.WebhookSecret) || seen[got.WebhookSecret] {
			t.Fatalf("rotation %d: secret %q, want a new one like %q", i+1, got.WebhookSecret, before.WebhookSecret)
		}
		seen[got.WebhookSecret] = true
		want := before
		want.WebhookSecret = got.WebhookSecret
		if !got.CreateTime.Equal(want.CreateTime) {
			t.Fatalf("rotation %d changed the creation time: %v, want %v", i+1, got.CreateTime, want.CreateTime)
		}
		got.CreateTime = want.CreateTime
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("rotation %d answered %+v, want the tenant with only its secret changed: %+v", i+1, got, want)
		}
		var stored tenants.Tenant
		if resp, data := b.do("GET", "/v1/tenants/acme", adminKey, "", &stored); resp.StatusCode != http.StatusOK || stored.WebhookSecret != got.WebhookSecret {
			t.Fatalf("GET after rotation %d: %d %s, want secret %q", i+1, resp.StatusCode, data, got.WebhookSecret)
		}
	}

	// The tenant's key still works and is still listed.
	var keys struct{ Keys []KeyResponse }
	if resp, data := b.do("GET", "/v1/tenants/acme/keys", keySecret, "", &keys); resp.StatusCode != http.StatusOK ||
		len(keys.Keys) != 1 || keys.Keys[0].ClientID != key.ID {
		t.Fatalf("the tenant's keys after rotations: %d %s, want its key %s", resp.StatusCode, data, key.ID)
	}
}

// A rotation that is not an admin's on an existing tenant is refused with
// problem JSON and leaves the secret as it was.
func TestRotateWebhookSecretRefused(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	acme, err := b.store.CreateTenant(ctx, tenants.Tenant{ID: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	_, acmeKey, err := b.store.NewKey(ctx, "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, key, body string
		status                int
		typ                   string
	}{
		{"unknown tenant", "/v1/tenants/nope/webhook-secret:rotate", adminKey, "", 404, "tenant-not-found"},
		{"id no tenant can have", "/v1/tenants/NOPE/webhook-secret:rotate", adminKey, "", 404, "tenant-not-found"},
		{"the tenant's own key", rotatePath, acmeKey, "", 403, "admin-only"},
		{"no credential", rotatePath, "", "", 401, "unauthenticated"},
		{"bad credential", rotatePath, "not-a-key-0123456789", "", 401, "unauthenticated"},
		// The secret is random: the request cannot set one.
		{"a body with fields", rotatePath, adminKey, `{"webhookSecret":"whsec_mine"}`, 400, "malformed-body"},
	} {
		resp, data := b.do("POST", tc.path, tc.key, tc.body, nil)
		b.wantProblem(tc.name, resp, data, tc.status, tc.typ)
	}
	if now, err := b.store.Tenant(ctx, "acme"); err != nil || now.WebhookSecret != acme.WebhookSecret {
		t.Fatalf("after refused rotations the secret is %q (%v), want it unchanged %q", now.WebhookSecret, err, acme.WebhookSecret)
	}
}

// The published API document describes the rotation.
func TestOpenAPIDescribesRotation(t *testing.T) {
	b := setup(t)
	var doc struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	if resp, data := b.do("GET", "/v1/openapi.json", "", "", &doc); resp.StatusCode != http.StatusOK {
		t.Fatalf("openapi: %d %s", resp.StatusCode, data)
	}
	if _, ok := doc.Paths["/v1/tenants/{tenant}/webhook-secret:rotate"]["post"]; !ok {
		t.Fatalf("openapi has no POST /v1/tenants/{tenant}/webhook-secret:rotate; paths: %v", doc.Paths)
	}
}
