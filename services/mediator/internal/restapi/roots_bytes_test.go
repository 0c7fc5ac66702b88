package restapi

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// Roots too large in total to travel with every job are refused with a
// 400 naming locatorRoots and the bound, on create and on set; the roots
// stay as they were.
func TestSetLocatorRootsTooLarge(t *testing.T) {
	b := setup(t)
	var roots []string
	for i := range 64 {
		roots = append(roots, fmt.Sprintf("file:///srv/%s/%d/", strings.Repeat("a", 2000), i))
	}
	body, err := json.Marshal(map[string]any{"roots": roots})
	if err != nil {
		t.Fatal(err)
	}
	if resp, data := b.do("POST", "/v1/tenants", adminKey, `{"id":"acme","locatorRoots":["file:///srv/media/acme/"]}`, nil); resp.StatusCode != 201 {
		t.Fatalf("create: %d %s", resp.StatusCode, data)
	}
	resp, data := b.do("PUT", rootsPath, adminKey, string(body), nil)
	b.wantProblem("roots of 128 KiB", resp, data, 400, "invalid-argument")
	if !strings.Contains(string(data), "locatorRoots") || !strings.Contains(string(data), "bytes") {
		t.Errorf("refusal %s does not name locatorRoots and the bound", data)
	}
	create, err := json.Marshal(map[string]any{"id": "big", "locatorRoots": roots})
	if err != nil {
		t.Fatal(err)
	}
	resp, data = b.do("POST", "/v1/tenants", adminKey, string(create), nil)
	b.wantProblem("create with roots of 128 KiB", resp, data, 400, "invalid-argument")
	if tn, err := b.store.Tenant(t.Context(), "acme"); err != nil || !slices.Equal(tn.LocatorRoots, []string{"file:///srv/media/acme/"}) {
		t.Fatalf("after the refusal the roots are %q (%v), want them unchanged", tn.LocatorRoots, err)
	}
}
