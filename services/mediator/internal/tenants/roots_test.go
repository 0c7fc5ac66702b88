package tenants

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

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
		{"file:///" + strings.Repeat("a", maxRootLen), "longer than"},
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

// A locator is within a root as the worker will read it: the decoded,
// cleaned path at a segment boundary, the s3 bucket exactly and the key's
// prefix; never through "..".
func TestRootsWithin(t *testing.T) {
	roots, err := NormalizeLocatorRoots([]string{"file:///srv/media/acme/", "s3://acme-bucket/", "s3://shared/acme/"})
	if err != nil {
		t.Fatal(err)
	}
	r := ParseRoots(roots)
	for _, tc := range []struct {
		url    string
		within bool
	}{
		{"file:///srv/media/acme/clip.mp4", true},
		{"file:///srv/media/acme/", true},
		{"file:///srv/media/acme", true}, // the root directory itself (an output location)
		{"file://localhost/srv/media/acme/a/b.mp4", true},
		{"FILE:///srv/media/acme/x", true},
		{"file:///srv//media/./acme/x", true},
		{"file:///srv/media/acme%2Fx.mp4", true}, // decodes to /srv/media/acme/x.mp4, as the worker reads it
		{"file:///srv/media/acme2/x.mp4", false},
		{"file:///srv/media/acm", false},
		{"file:///srv/media/acme/../acme2/x.mp4", false},
		{"file:///srv/media/acme/sub/../x.mp4", false}, // ".." is refused, even staying inside
		{"file:///srv/media/acme%2F..%2Facme2/x.mp4", false},
		{"file:///srv/media/acme/%2E%2E/acme2/x.mp4", false},
		{"file:///tmp/audit-b/media/tenantA/secret-clip.mp4", false},
		{"s3://acme-bucket/any/key.mp4", true},
		{"s3://shared/acme/x.mp4", true},
		{"S3://shared/acme/x.mp4", true},
		{"s3://shared/acme2/x.mp4", false},
		{"s3://shared/acme", false}, // an object beside the prefix, not in it
		{"s3://shared/other/x.mp4", false},
		{"s3://shared/acme/../other/x.mp4", false},
		{"s3://shared/acme/%2E%2E/other/x.mp4", false},
		{"s3://shared/acme/./x.mp4", false},
		{"s3://ACME-BUCKET/x.mp4", false}, // another bucket name: compared exactly
		{"s3://acme-bucket.evil/x.mp4", false},
		{"https://media.example.com/x.mp4", true}, // not governed by roots
	} {
		ok, why, err := r.Within(tc.url)
		if err != nil || ok != tc.within || (!ok && why == "") {
			t.Errorf("%s: within %v (%q, %v), want %v", tc.url, ok, why, err, tc.within)
		}
	}
	if _, _, err := r.Within("file://nas/srv/media/acme/x"); !errors.Is(err, ErrBadLocator) {
		t.Errorf("file URL with a host: %v, want ErrBadLocator", err)
	}

	var none Roots
	for _, u := range []string{"file:///srv/media/acme/x", "s3://acme-bucket/x"} {
		if ok, why, _ := none.Within(u); ok || !strings.Contains(why, "no locator roots") {
			t.Errorf("%s without roots: %v %q, want refused for having none", u, ok, why)
		}
	}
	all := ParseRoots([]string{"file:///"})
	if ok, _, _ := all.Within("file:///etc/passwd"); !ok {
		t.Error("file:/// does not allow /etc/passwd")
	}
	for _, u := range []string{"file:///x", "s3://b/x", "S3://b/x", "FILE:///x"} {
		if !Scoped(u) {
			t.Errorf("%s not scoped", u)
		}
	}
	for _, u := range []string{"https://h/x", "http://h/x", "files:///x", "x"} {
		if Scoped(u) {
			t.Errorf("%s scoped", u)
		}
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
