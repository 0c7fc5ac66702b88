package devstack

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// BuildBinaries builds the four service binaries once per test process and
// returns their directory. Integration tests run the real binaries as
// separate processes, as production does.
func BuildBinaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		buildDir, err = os.MkdirTemp("", "medius-bin-")
		if err != nil {
			buildErr = err
			return
		}
		for _, s := range Services {
			// -race when the test binary itself was built with it would be
			// ideal, but it doubles build time; the services' own tests run
			// under -race.
			cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, s), "./services/"+s)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", s, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// RepoRoot finds the directory holding go.work.
func RepoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOWORK").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOWORK: %w", err)
	}
	w := strings.TrimSpace(string(out))
	if w == "" || w == "off" {
		return "", fmt.Errorf("not inside the Medius go.work workspace")
	}
	return filepath.Dir(w), nil
}
