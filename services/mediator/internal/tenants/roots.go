package tenants

import (
	"fmt"

	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/problem"
)

// A tenant's locator roots are the URL prefixes its file:// and s3://
// locators must fall under: a worker reads and writes those with its own
// rights (its --file-roots, its S3 credentials), shared by every tenant, so
// the roots are what keeps one tenant's jobs off another's media. The
// mediator checks a job's locators against them when it accepts the job,
// and gives them to the job, whose workers check every locator it resolves
// again. Both compare with pkg/locator's TenantRoots, so the two checks
// cannot drift apart. http(s) locators are network fetches, governed by the
// workers' network policy, not by roots.

// MaxLocatorRoots bounds a tenant's roots.
const MaxLocatorRoots = 64

// MaxLocatorRootsBytes bounds a tenant's roots in total, as stored
// (normalised, duplicates dropped). Every job of the tenant carries them:
// in its record, its announcement, the processor's record, each work item,
// and in every answer that lists it (a batch's answer repeats them for up
// to 1,000 jobs). At 64 roots of 2 KiB each job would gain 128 KiB: its
// record, which also holds up to 256 KiB of input and 512 KiB of output,
// would near NATS's 1 MiB max_payload, and a batch's answer would pass the
// 64 MiB the CLI and the REST gateway take, hiding jobs just created. 16
// KiB still holds 64 roots of 256 bytes.
const MaxLocatorRootsBytes = 16 << 10

// NormalizeLocatorRoots checks roots and returns them normalised
// (locator.NormalizeRoot): file roots absolute and cleaned, s3 roots
// naming a bucket; each ends in "/" (a prefix of whole path segments),
// schemes are lowercase, a file root names no host, and duplicates are
// dropped. A bad root is InvalidArgument naming locatorRoots[i]; roots too
// many or too large in total (MaxLocatorRootsBytes) name locatorRoots. None
// gives an empty, non-nil list.
func NormalizeLocatorRoots(roots []string) ([]string, error) {
	if len(roots) > MaxLocatorRoots {
		return nil, problem.InvalidArgument("locatorRoots", "at most %d locator roots, not %d", MaxLocatorRoots, len(roots))
	}
	out := make([]string, 0, len(roots))
	seen := map[string]bool{}
	total := 0
	for i, raw := range roots {
		s, err := locator.NormalizeRoot(raw)
		if err != nil {
			return nil, problem.InvalidArgument(fmt.Sprintf("locatorRoots[%d]", i), "locator root %q: %v", raw, err)
		}
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
			total += len(s)
		}
	}
	if total > MaxLocatorRootsBytes {
		return nil, problem.InvalidArgument("locatorRoots", "locator roots of %d bytes in total (normalised), at most %d: every job of the tenant carries them; use fewer, shorter roots (a parent directory or prefix)", total, MaxLocatorRootsBytes)
	}
	return out, nil
}

// Roots are a tenant's locator roots, parsed, for checking its jobs'
// locators (locator.TenantRoots). The zero value allows no file:// and no
// s3:// locator.
type Roots = locator.TenantRoots
