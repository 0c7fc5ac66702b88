package locator

import (
	"strings"
	"testing"
)

// A root an admin is told was accepted works: what NormalizeRoot accepts,
// ParseTenantRoots (the mediator's cache and the workers) keeps. Its
// normalised form is percent-encoded, up to three times as long as given
// (a space, a non-ASCII letter), so the length bound holds it normalised;
// a root over it is refused with a clear reason rather than stored and
// then silently left out, allowing nothing.
func TestTenantRootLengthNormalised(t *testing.T) {
	for _, raw := range []string{
		"file:///srv/" + strings.Repeat("é", 700) + "/",           // 1,414 bytes, 4,214 encoded
		"file:///srv/" + strings.Repeat("my clip ", 200) + "/",    // spaces: %20
		"s3://shared/" + strings.Repeat("a b/", 300),              // an s3 prefix
		"file:///srv/" + strings.Repeat("a", MaxRootLen-13) + "/", // at the bound, nothing to encode
	} {
		norm, err := NormalizeRoot(raw)
		if err != nil {
			if !strings.Contains(err.Error(), "longer than") {
				t.Errorf("root of %d bytes refused for %v, want its length named", len(raw), err)
			}
			continue
		}
		if got := ParseTenantRoots([]string{norm}); got.Len() != 1 {
			t.Errorf("root of %d bytes (%d normalised) accepted by NormalizeRoot but left out by ParseTenantRoots", len(raw), len(norm))
		}
		if len(norm) > MaxRootLen {
			t.Errorf("root normalised to %d bytes, over MaxRootLen %d", len(norm), MaxRootLen)
		}
	}
}
