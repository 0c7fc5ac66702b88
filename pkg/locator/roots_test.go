package locator

import (
	"errors"
	"strings"
	"testing"
)

// A locator is within a root as the worker will read it: the decoded,
// cleaned path at a segment boundary, the s3 bucket exactly and the key's
// prefix; never through "..". The mediator's check and the worker's use
// this same comparison.
func TestTenantRootsWithin(t *testing.T) {
	var roots []string
	for _, raw := range []string{"file:///srv/media/acme/", "s3://acme-bucket/", "s3://shared/acme/"} {
		n, err := NormalizeRoot(raw)
		if err != nil {
			t.Fatal(err)
		}
		roots = append(roots, n)
	}
	r := ParseTenantRoots(roots)
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
	if _, _, err := r.Within("file://nas/srv/media/acme/x"); !errors.Is(err, ErrInvalid) {
		t.Errorf("file URL with a host: %v, want ErrInvalid", err)
	}

	var none TenantRoots
	for _, u := range []string{"file:///srv/media/acme/x", "s3://acme-bucket/x"} {
		if ok, why, _ := none.Within(u); ok || !strings.Contains(why, "no locator roots") {
			t.Errorf("%s without roots: %v %q, want refused for having none", u, ok, why)
		}
	}
	all := ParseTenantRoots([]string{"file:///"})
	if ok, _, _ := all.Within("file:///etc/passwd"); !ok {
		t.Error("file:/// does not allow /etc/passwd")
	}
	// A root that does not parse (from a newer mediator, say) allows
	// nothing rather than everything.
	if bad := ParseTenantRoots([]string{"file:///srv/../"}); bad.Len() != 0 {
		t.Errorf("an unparsable root was kept: %v", bad.Strings())
	}
	for _, u := range []string{"file:///x", "s3://b/x", "S3://b/x", "FILE:///x"} {
		if !Rooted(u) {
			t.Errorf("%s not rooted", u)
		}
	}
	for _, u := range []string{"https://h/x", "http://h/x", "files:///x", "x"} {
		if Rooted(u) {
			t.Errorf("%s rooted", u)
		}
	}
}
