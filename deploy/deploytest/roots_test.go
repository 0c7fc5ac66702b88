package deploytest

import (
	"path"
	"strings"
	"testing"

	"github.com/medius-platform/medius/pkg/flagenv"
)

// checkLocatorRoots checks that the mediator gives its bootstrap tenant
// file:// locator roots, each inside a directory the workers read file://
// locators from: a root outside them names files no worker can open, and
// none at all makes a fresh install refuse every file:// job (403
// locator-not-allowed). envs holds each service's MEDIUS_* settings.
func checkLocatorRoots(t *testing.T, where string, envs map[string]map[string]string) {
	t.Helper()
	mediator, worker := envs["mediator"], envs["job-worker"]
	if mediator == nil || worker == nil {
		return // reported as a missing service already
	}
	dirs := flagenv.List(worker["MEDIUS_FILE_ROOTS"])
	files := 0
	for _, root := range flagenv.List(mediator["MEDIUS_BOOTSTRAP_LOCATOR_ROOTS"]) {
		p, ok := strings.CutPrefix(root, "file://")
		if !ok {
			continue
		}
		files++
		inside := false
		for _, dir := range dirs {
			if d := path.Clean(dir) + "/"; strings.HasPrefix(p, d) {
				inside = true
			}
		}
		if !inside {
			t.Errorf("%s: the bootstrap tenant's locator root %s lies outside the workers' MEDIUS_FILE_ROOTS %q", where, root, dirs)
		}
	}
	if files == 0 && len(dirs) > 0 {
		t.Errorf("%s: the workers read file:// locators under %q, but the mediator's MEDIUS_BOOTSTRAP_LOCATOR_ROOTS gives the bootstrap tenant no file:// root", where, dirs)
	}
}
