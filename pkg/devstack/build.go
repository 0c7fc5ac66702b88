package devstack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/devenv"
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

// StartForTest starts the platform for t and stops it when t ends. Empty
// fields of cfg are filled in: the binaries (BuildBinaries), a data
// directory under t.TempDir and free REST and gRPC addresses. When the start
// or the test fails, the tail of every service's log goes to t's output.
func StartForTest(t testing.TB, cfg Config) *Stack {
	t.Helper()
	if cfg.BinDir == "" {
		cfg.BinDir = BuildBinaries(t)
	}
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(t.TempDir(), "stack")
	}
	for _, addr := range []*string{&cfg.RESTAddr, &cfg.GRPCAddr} {
		if *addr == "" {
			a, err := devenv.FreeAddr()
			if err != nil {
				t.Fatal(err)
			}
			*addr = a
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stack, err := Start(ctx, cfg)
	if err != nil {
		DumpLogs(t, cfg.Dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stack.Stop()
		if t.Failed() {
			DumpLogs(t, cfg.Dir)
		}
	})
	return stack
}

// DumpLogs writes the last 8 kB of each service log under dir to t's output.
func DumpLogs(t testing.TB, dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		t.Logf("---- %s ----\n%s", filepath.Base(f), b)
	}
}
