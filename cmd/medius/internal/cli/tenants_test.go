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
	run := func(key string, args ...string) (string, error) {
		var out bytes.Buffer
		cmd := New()
		cmd.SetArgs(append(args, "--rest-url", "http://"+stack.RESTAddr, "--admin-key", key))
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		err := cmd.ExecuteContext(ctx)
		return out.String(), err
	}
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
