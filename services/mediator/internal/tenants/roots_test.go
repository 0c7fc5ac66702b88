package tenants

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
)

// Roots are stored normalised, so what an admin sees is what is compared:
// schemes lowercase, file roots cleaned with no host, every root a prefix of
// whole segments (ending in "/"), duplicates dropped.
func TestNormalizeLocatorRoots(t *testing.T) {
	got, err := NormalizeLocatorRoots([]string{
		"file:///srv/media/acme",
		"FILE://localhost/srv//media/./acme/", // the same directory
		"file:///srv/media/my dir,2/",
		"s3://acme-bucket",
		"S3://shared/acme",
		"s3://shared/acme/",
		"file:///",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"file:///srv/media/acme/", "file:///srv/media/my%20dir%2C2/", "s3://acme-bucket/", "s3://shared/acme/", "file:///"}
	if !slices.Equal(got, want) {
		t.Fatalf("normalised %q, want %q", got, want)
	}
	// Normalised roots read back as themselves, a comma escaped included.
	if again, err := NormalizeLocatorRoots(got); err != nil || !slices.Equal(again, want) {
		t.Fatalf("normalising again: %q, %v", again, err)
	}
	if none, err := NormalizeLocatorRoots(nil); err != nil || none == nil || len(none) != 0 {
		t.Fatalf("no roots: %#v, %v, want an empty list", none, err)
	}

	for _, tc := range []struct{ root, why string }{
		{"", "empty"},
		{"/srv/media/acme/", "no scheme"},
		{"file:relative/dir", "not an absolute URL"},
		{"file://nas/srv/media/", `names host "nas"`},
		{"file:///srv/media/../etc/", `".." segment`},
		{"file:///srv/media/acme%2F..%2F..%2Fetc/", `".." segment`},
		{"file:///srv/media/?x=1", "no query"},
		{"https://media.example.com/acme/", "network policy"},
		{"ftp://host/dir/", `scheme "ftp"`},
		{"s3:///prefix/", "needs a bucket"},
		{"s3://Acme/", "lowercase"},
		{"s3://acme:9000/", "needs a bucket"},
		{"s3://user@acme/", "credentials"},
		{"s3://shared/a/../b/", `".." segments`},
		{"s3://shared/a//b/", "empty"},
		{"file:///" + strings.Repeat("a", locator.MaxRootLen), "longer than"},
	} {
		_, err := NormalizeLocatorRoots([]string{"file:///ok/", tc.root})
		var pe *problem.Error
		if !errors.As(err, &pe) || pe.Field != "locatorRoots[1]" || !strings.Contains(pe.Detail, tc.why) {
			t.Errorf("root %q: %v, want InvalidArgument on locatorRoots[1] saying %q", tc.root, err, tc.why)
		}
	}
	many := make([]string, MaxLocatorRoots+1)
	for i := range many {
		many[i] = fmt.Sprintf("file:///srv/media/t%d/", i)
	}
	if _, err := NormalizeLocatorRoots(many); err == nil || !strings.Contains(err.Error(), "at most 64") {
		t.Fatalf("%d roots: %v, want refused", len(many), err)
	}
}

// Roots are kept with the rest of the record: set through the store,
// created with a tenant, kept by quota changes and served to job creation
// from the quota's cache (at once on the Store that set them, within
// QuotaTTL on another).
func TestLocatorRootsStored(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	now := time.Unix(1000, 0)
	s := New(env.EtcdCli)
	s.now = func() time.Time { return now }
	replica := New(env.EtcdCli)

	if _, err := s.LocatorRoots(ctx, "acme"); !errors.Is(err, ErrTenantNotFound) {
		t.Fatalf("roots of a missing tenant: %v", err)
	}
	created, err := s.CreateTenant(ctx, Tenant{ID: "acme", LocatorRoots: []string{"file:///srv/media/acme"}})
	if err != nil || !slices.Equal(created.LocatorRoots, []string{"file:///srv/media/acme/"}) {
		t.Fatalf("create: %+v, %v", created, err)
	}
	if _, err := s.CreateTenant(ctx, Tenant{ID: "bad", LocatorRoots: []string{"http://x/"}}); err == nil {
		t.Fatal("a tenant with an http root was created")
	}
	plain, err := s.CreateTenant(ctx, Tenant{ID: "plain"})
	if err != nil || plain.LocatorRoots == nil || len(plain.LocatorRoots) != 0 {
		t.Fatalf("tenant without roots: %#v, %v", plain.LocatorRoots, err)
	}
	if r, err := s.LocatorRoots(ctx, "acme"); err != nil || !slices.Equal(r.Strings(), []string{"file:///srv/media/acme/"}) {
		t.Fatalf("roots just created: %v, %v", r.Strings(), err)
	}

	if _, err := s.SetLocatorRoots(ctx, "nope", nil); !errors.Is(err, ErrTenantNotFound) {
		t.Fatalf("roots of a missing tenant set: %v", err)
	}
	got, err := s.SetLocatorRoots(ctx, "acme", []string{"s3://acme-bucket", "file:///srv/media/acme/"})
	if err != nil || !slices.Equal(got.LocatorRoots, []string{"s3://acme-bucket/", "file:///srv/media/acme/"}) {
		t.Fatalf("set: %+v, %v", got, err)
	}
	if r, _ := s.LocatorRoots(ctx, "acme"); r.Len() != 2 {
		t.Fatalf("roots just set through the same store: %v", r.Strings())
	}
	if _, err := s.SetQuota(ctx, "acme", Quota{MaxConcurrentJobs: 2}); err != nil {
		t.Fatal(err)
	}
	if tn, _ := s.Tenant(ctx, "acme"); len(tn.LocatorRoots) != 2 {
		t.Fatalf("a quota change lost the roots: %+v", tn)
	}
	if r, _ := s.LocatorRoots(ctx, "acme"); r.Len() != 2 { // cached from here
		t.Fatalf("roots after a quota change: %v", r.Strings())
	}

	if _, err := replica.SetLocatorRoots(ctx, "acme", nil); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.LocatorRoots(ctx, "acme"); r.Len() != 2 {
		t.Fatalf("within the TTL the cached roots serve, got %v", r.Strings())
	}
	now = now.Add(QuotaTTL)
	if r, err := s.LocatorRoots(ctx, "acme"); err != nil || r.Len() != 0 {
		t.Fatalf("another replica's roots after the TTL: %v, %v", r.Strings(), err)
	}
	if tn, _ := s.Tenant(ctx, "acme"); tn.LocatorRoots == nil || len(tn.LocatorRoots) != 0 {
		t.Fatalf("cleared roots read back as %#v, want an empty list", tn.LocatorRoots)
	}
}
