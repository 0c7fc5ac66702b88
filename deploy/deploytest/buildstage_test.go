package deploytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDockerBuildStage replays the build stage of each Dockerfile without a
// Docker engine: its COPY instructions copy from the repository into an empty
// directory and its RUN commands run there, except that the services' go
// build becomes go list -deps (a full -trimpath build of a service takes
// minutes here; resolving every package it imports from the copied modules
// under the edited go.work is what can break). The healthcheck, stdlib only,
// is really built and run.
func TestDockerBuildStage(t *testing.T) {
	root := repoRoot(t)
	for _, tc := range []struct{ dockerfile, service string }{
		{"deploy/docker/Dockerfile", "mediator"},
		{"deploy/docker/Dockerfile.worker", "job-worker"},
	} {
		t.Run(filepath.Base(tc.dockerfile), func(t *testing.T) {
			tmp := t.TempDir()
			src, out := filepath.Join(tmp, "src"), filepath.Join(tmp, "out")
			stage := parseDockerfile(t, filepath.Join(root, tc.dockerfile))[0]
			if !strings.HasPrefix(stage.from, "golang:") {
				t.Fatalf("build stage FROM %s, want a golang image", stage.from)
			}
			if err := os.MkdirAll(src, 0o755); err != nil {
				t.Fatal(err)
			}
			args := map[string]string{"SERVICE": tc.service, "VERSION": "v9.9.9-test"}
			for _, in := range stage.ins {
				switch in.cmd {
				case "WORKDIR":
					if in.args != "/src" {
						t.Fatalf("WORKDIR %s: the test assumes /src", in.args)
					}
				case "COPY":
					f := strings.Fields(in.args)
					dst := filepath.Join(src, f[len(f)-1])
					for _, s := range f[:len(f)-1] {
						matches, _ := filepath.Glob(filepath.Join(root, s))
						for _, m := range matches {
							target := dst
							if strings.HasSuffix(f[len(f)-1], "/") && !strings.HasSuffix(s, "/") || len(f) > 2 {
								target = filepath.Join(dst, filepath.Base(m))
							}
							copyTree(t, m, target)
						}
					}
				case "RUN":
					cmd := regexp.MustCompile(`--mount=\S+\s*`).ReplaceAllString(in.args, "")
					for k, v := range args {
						cmd = strings.ReplaceAll(cmd, "${"+k+"}", v)
					}
					var pkgs []string
					for _, m := range goBuild.FindAllStringSubmatch(cmd, -1) {
						pkgs = append(pkgs, m[2])
					}
					if len(pkgs) > 0 {
						cmd = "go list -deps " + strings.Join(pkgs, " ") + " >/dev/null && " +
							"CGO_ENABLED=0 go build -o " + filepath.Join(out, "healthcheck") + " ./deploy/healthcheck"
					}
					sh := exec.Command("bash", "-euc", cmd)
					sh.Dir = src
					sh.Env = append(os.Environ(), "GOWORK=", "GOFLAGS=-mod=readonly")
					if b, err := sh.CombinedOutput(); err != nil {
						t.Fatalf("RUN %s: %v\n%s", cmd, err, b)
					}
					if len(pkgs) > 0 && !contains(pkgs, "./services/"+tc.service) {
						t.Errorf("the build stage builds %v, not ./services/%s", pkgs, tc.service)
					}
				}
			}
			hc := filepath.Join(out, "healthcheck")
			b, err := exec.Command(hc, "--admin-addr", "127.0.0.1:1").CombinedOutput()
			if code := exitCode(err); code != 1 {
				t.Errorf("healthcheck against nothing: exit %d, want 1: %s", code, b)
			}
		})
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// copyTree copies a file or directory (as COPY does).
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.Walk(from, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if info.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatalf("COPY %s: %v", from, err)
	}
}
