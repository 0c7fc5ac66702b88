package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/devstack"
)

// TestTenantsRotateWebhookSecret runs `medius tenants rotate-webhook-secret`
// against a real dev stack: it shows the tenant with a new secret, which
// `tenants get` shows from then on, and leaves the quota as it was.
func TestTenantsRotateWebhookSecret(t *testing.T) {
	stack := devstack.StartForTest(t, devstack.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := adminRun(ctx, stack)
	secretLine := regexp.MustCompile(`(?m)^webhook secret: (whsec_[0-9a-f]+)$`)
	// shown returns the secret a table output shows under the tenant's row.
	shown := func(what, out string) string {
		t.Helper()
		m := secretLine.FindStringSubmatch(out)
		if m == nil || !strings.Contains(out, "\nacme ") {
			t.Fatalf("%s: want the tenant's row and its webhook secret:\n%s", what, out)
		}
		return m[1]
	}

	out, err := run(stack.AdminKey, "tenants", "create", "acme", "--max-concurrent", "4")
	if err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	created := shown("create", out)
	out, err = run(stack.AdminKey, "tenants", "get", "acme")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if got := shown("get", out); got != created {
		t.Fatalf("get shows secret %s, create showed %s", got, created)
	}

	out, err = run(stack.AdminKey, "tenants", "rotate-webhook-secret", "acme")
	if err != nil {
		t.Fatalf("rotate: %v\n%s", err, out)
	}
	rotated := shown("rotate", out)
	if rotated == created {
		t.Fatalf("rotate shows the old secret %s", rotated)
	}
	out, err = run(stack.AdminKey, "tenants", "get", "acme", "-o", "json")
	if err != nil {
		t.Fatalf("get -o json: %v", err)
	}
	var got tenant
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("get -o json: %v\n%s", err, out)
	}
	if got.WebhookSecret != rotated || got.Quota.MaxConcurrentJobs != 4 {
		t.Fatalf("after the rotation get shows %+v, want secret %s and the quota it had (4 concurrent)", got, rotated)
	}

	// Refusals read as the problem they are.
	if _, err := run(stack.AdminKey, "tenants", "rotate-webhook-secret", "nope"); err == nil ||
		err.Error() != `Not found (tenant-not-found): tenant "nope" not found` {
		t.Fatalf("rotating an unknown tenant: %v", err)
	}
	if _, err := run(stack.APIKey, "tenants", "rotate-webhook-secret", "acme"); err == nil || !strings.Contains(err.Error(), "(admin-only)") {
		t.Fatalf("rotating with a tenant's key: %v, want admin-only", err)
	}
}

// TestTenantsLocatorRoots runs `medius tenants create --locator-root` and
// `medius tenants set-locator-roots` against a real dev stack: the roots
// are shown normalised in the table and as JSON, replaced by a set, cleared
// by a set naming none; a bad root or a tenant's own key is refused with
// the problem. The dev stack's default tenant has its file roots.
func TestTenantsLocatorRoots(t *testing.T) {
	media := t.TempDir()
	stack := devstack.StartForTest(t, devstack.Config{FileRoots: []string{media}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := adminRun(ctx, stack)
	roots := func(id string) []string {
		t.Helper()
		out, err := run(stack.AdminKey, "tenants", "get", id, "-o", "json")
		var got tenant
		if err != nil || json.Unmarshal([]byte(out), &got) != nil {
			t.Fatalf("get %s: %v\n%s", id, err, out)
		}
		return got.LocatorRoots
	}
	if got := roots("default"); len(got) != 1 || got[0] != "file://"+media+"/" {
		t.Fatalf("the dev stack's default tenant has roots %q, want its file root %s", got, media)
	}

	out, err := run(stack.AdminKey, "tenants", "create", "acme", "--locator-root", "file:///srv/media/acme", "--locator-root", "s3://media/acme")
	if err != nil || !strings.Contains(out, "LOCATOR ROOTS") || !strings.Contains(out, "file:///srv/media/acme/,s3://media/acme/") {
		t.Fatalf("create with roots: %v, want the table with the roots normalised:\n%s", err, out)
	}
	out, err = run(stack.AdminKey, "tenants", "set-locator-roots", "acme", "s3://media/acme2/")
	if err != nil || !strings.Contains(out, "s3://media/acme2/") || strings.Contains(out, "/srv/media/acme") {
		t.Fatalf("set-locator-roots: %v\n%s", err, out)
	}
	if got := roots("acme"); len(got) != 1 || got[0] != "s3://media/acme2/" {
		t.Fatalf("after set-locator-roots: %q", got)
	}
	out, err = run(stack.AdminKey, "tenants", "list")
	if err != nil || !regexp.MustCompile(`(?m)^acme .*s3://media/acme2/`).MatchString(out) {
		t.Fatalf("list: %v, want acme's roots in its row:\n%s", err, out)
	}
	if _, err := run(stack.AdminKey, "tenants", "set-locator-roots", "acme"); err != nil {
		t.Fatalf("clearing roots: %v", err)
	}
	if got := roots("acme"); len(got) != 0 {
		t.Fatalf("after clearing: %q", got)
	}

	if _, err := run(stack.AdminKey, "tenants", "set-locator-roots", "acme", "https://cdn.example.com/acme/"); err == nil ||
		!strings.Contains(err.Error(), "(invalid-argument)") || !strings.Contains(err.Error(), "network policy") {
		t.Fatalf("an http root: %v, want invalid-argument saying why", err)
	}
	if _, err := run(stack.APIKey, "tenants", "set-locator-roots", "default", "file:///"); err == nil || !strings.Contains(err.Error(), "(admin-only)") {
		t.Fatalf("a tenant's key setting roots: %v, want admin-only", err)
	}
	if _, err := run(stack.AdminKey, "tenants", "set-locator-roots"); err == nil {
		t.Fatal("set-locator-roots without a tenant succeeded")
	}
}

// adminRun runs the CLI against stack's REST API with the given admin key
// and returns what it printed, stdout and stderr together.
func adminRun(ctx context.Context, stack *devstack.Stack) func(key string, args ...string) (string, error) {
	return func(key string, args ...string) (string, error) {
		var out bytes.Buffer
		cmd := New()
		cmd.SetArgs(append(args, "--rest-url", "http://"+stack.RESTAddr, "--admin-key", key))
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		err := cmd.ExecuteContext(ctx)
		return out.String(), err
	}
}
