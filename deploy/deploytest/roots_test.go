package deploytest

import (
	"path"
	"slices"
	"testing"

	"github.com/medius-platform/medius/pkg/flagenv"
)

// checkLocatorRoots checks that the mediator gives its bootstrap tenant a
// locator root for each directory the workers read file:// locators from:
// without one, a fresh install refuses every file:// job (403
// locator-not-allowed). envs holds each service's MEDIUS_* settings.
func checkLocatorRoots(t *testing.T, where string, envs map[string]map[string]string) {
	t.Helper()
	mediator, worker := envs["mediator"], envs["job-worker"]
	if mediator == nil || worker == nil {
		return // reported as a missing service already
	}
	roots := flagenv.List(mediator["MEDIUS_BOOTSTRAP_LOCATOR_ROOTS"])
	for _, dir := range flagenv.List(worker["MEDIUS_FILE_ROOTS"]) {
		if want := "file://" + path.Clean(dir) + "/"; !slices.Contains(roots, want) {
			t.Errorf("%s: the workers read file:// locators under %s, but the mediator's MEDIUS_BOOTSTRAP_LOCATOR_ROOTS (%q) lacks %s: the bootstrap tenant could name none of them",
				where, dir, roots, want)
		}
	}
}
