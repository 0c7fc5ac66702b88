package restapi

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/medius-platform/medius/services/mediator/internal/tenants"
)

const rootsPath = "/v1/tenants/acme/locator-roots"

// An admin sets a tenant's locator roots: they are stored normalised,
// shown by GET and kept by other changes; an empty list clears them. A
// tenant is created with roots the same way.
func TestSetLocatorRoots(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	var created tenants.Tenant
	if resp, data := b.do("POST", "/v1/tenants", adminKey, `{"id":"acme","locatorRoots":["file:///srv/media/acme"]}`, &created); resp.StatusCode != http.StatusCreated ||
		!slices.Equal(created.LocatorRoots, []string{"file:///srv/media/acme/"}) {
		t.Fatalf("create with roots: %d %s", resp.StatusCode, data)
	}
	var plain map[string]any
	if resp, data := b.do("POST", "/v1/tenants", adminKey, `{"id":"plain"}`, &plain); resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %s", resp.StatusCode, data)
	} else if roots, ok := plain["locatorRoots"].([]any); !ok || len(roots) != 0 {
		t.Fatalf("a tenant without roots shows %v, want locatorRoots: []", plain["locatorRoots"])
	}

	var got tenants.Tenant
	resp, data := b.do("PUT", rootsPath, adminKey, `{"roots":["S3://shared/acme","file:///srv/media/acme/./"]}`, &got)
	if want := []string{"s3://shared/acme/", "file:///srv/media/acme/"}; resp.StatusCode != http.StatusOK || !slices.Equal(got.LocatorRoots, want) ||
		got.ID != "acme" || got.WebhookSecret != created.WebhookSecret {
		t.Fatalf("set roots: %d %s, want the tenant with roots %q", resp.StatusCode, data, want)
	}
	var shown tenants.Tenant
	if resp, data := b.do("GET", "/v1/tenants/acme", adminKey, "", &shown); resp.StatusCode != http.StatusOK || !slices.Equal(shown.LocatorRoots, got.LocatorRoots) {
		t.Fatalf("GET after setting roots: %d %s", resp.StatusCode, data)
	}
	if _, err := b.store.SetQuota(ctx, "acme", tenants.Quota{MaxConcurrentJobs: 1}); err != nil {
		t.Fatal(err)
	}
	if tn, _ := b.store.Tenant(ctx, "acme"); !slices.Equal(tn.LocatorRoots, got.LocatorRoots) {
		t.Fatalf("a quota change lost the roots: %+v", tn)
	}
	if resp, data := b.do("PUT", rootsPath, adminKey, `{"roots":[]}`, &got); resp.StatusCode != http.StatusOK || len(got.LocatorRoots) != 0 {
		t.Fatalf("clear roots: %d %s", resp.StatusCode, data)
	}
}

// Only an admin sets roots, only valid ones, on a tenant that exists; a
// refused request leaves the roots as they were.
func TestSetLocatorRootsRefused(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	if _, err := b.store.CreateTenant(ctx, tenants.Tenant{ID: "acme", LocatorRoots: []string{"file:///srv/media/acme/"}}); err != nil {
		t.Fatal(err)
	}
	_, acmeKey, err := b.store.NewKey(ctx, "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, key, body string
		status                int
		typ, detail           string
	}{
		{"the tenant's own key", rootsPath, acmeKey, `{"roots":["file:///"]}`, 403, "admin-only", ""},
		{"no credential", rootsPath, "", `{"roots":["file:///"]}`, 401, "unauthenticated", ""},
		{"unknown tenant", "/v1/tenants/nope/locator-roots", adminKey, `{"roots":[]}`, 404, "tenant-not-found", ""},
		{"http root", rootsPath, adminKey, `{"roots":["file:///ok/","https://cdn.example.com/acme/"]}`, 400, "invalid-argument", "locatorRoots[1]"},
		{"relative file root", rootsPath, adminKey, `{"roots":["file://srv/media/"]}`, 400, "invalid-argument", "locatorRoots[0]"},
		{"dot-dot", rootsPath, adminKey, `{"roots":["file:///srv/media/acme/../"]}`, 400, "invalid-argument", "must not contain"},
		{"unknown field", rootsPath, adminKey, `{"root":["file:///"]}`, 400, "malformed-body", ""},
		{"no body", rootsPath, adminKey, "", 400, "malformed-body", ""},
	} {
		resp, data := b.do("PUT", tc.path, tc.key, tc.body, nil)
		b.wantProblem(tc.name, resp, data, tc.status, tc.typ)
		if !strings.Contains(string(data), tc.detail) {
			t.Errorf("%s: %s does not say %s", tc.name, data, tc.detail)
		}
	}
	resp, data := b.do("POST", "/v1/tenants", adminKey, `{"id":"bad","locatorRoots":["ftp://x/"]}`, nil)
	b.wantProblem("create with a bad root", resp, data, 400, "invalid-argument")
	if tn, err := b.store.Tenant(ctx, "acme"); err != nil || !slices.Equal(tn.LocatorRoots, []string{"file:///srv/media/acme/"}) {
		t.Fatalf("after refused requests the roots are %q (%v), want them unchanged", tn.LocatorRoots, err)
	}

	var doc struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	if resp, data := b.do("GET", "/v1/openapi.json", "", "", &doc); resp.StatusCode != http.StatusOK {
		t.Fatalf("openapi: %d %s", resp.StatusCode, data)
	}
	if _, ok := doc.Paths["/v1/tenants/{tenant}/locator-roots"]["put"]; !ok {
		t.Fatal("openapi has no PUT /v1/tenants/{tenant}/locator-roots")
	}
}
