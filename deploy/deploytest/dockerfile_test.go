package deploytest

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction with continuation lines joined.
type instruction struct{ cmd, args string }

// stage is one FROM ... section.
type stage struct {
	from string
	ins  []instruction
}

func parseDockerfile(t *testing.T, path string) []stage {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stages []stage
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		cmd, args, _ := strings.Cut(line, " ")
		in := instruction{strings.ToUpper(cmd), strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			stages = append(stages, stage{from: in.args})
			return
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("%s: %s before FROM", path, in.cmd)
			}
			return
		}
		stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		flush()
	}
	flush()
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages
}

// dockerEnv returns the ENV settings of the final stage.
func dockerEnv(t *testing.T, path string) map[string]string {
	stages := parseDockerfile(t, path)
	env := map[string]string{}
	for _, in := range stages[len(stages)-1].ins {
		if in.cmd != "ENV" {
			continue
		}
		for _, kv := range strings.Fields(in.args) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				env[k] = v
			}
		}
	}
	return env
}

var goBuild = regexp.MustCompile(`go build [^&]*?-o (\S+) (\./\S+)`)

// TestDockerfiles checks what can be checked without a Docker engine: the
// build stage copies every module go.work uses (except the one it drops) and
// builds packages that exist; the runtime stage runs as a non-root user, has a
// HEALTHCHECK on the admin server, and is labelled with its version.
func TestDockerfiles(t *testing.T) {
	root := repoRoot(t)
	work, err := os.ReadFile(filepath.Join(root, "go.work"))
	if err != nil {
		t.Fatal(err)
	}
	var uses []string
	for _, m := range regexp.MustCompile(`(?m)^\s*(\./[^\s)]+)`).FindAllStringSubmatch(string(work), -1) {
		uses = append(uses, strings.TrimPrefix(m[1], "./"))
	}
	if len(uses) == 0 {
		t.Fatal("no use directives found in go.work")
	}
	for _, df := range []string{"deploy/docker/Dockerfile", "deploy/docker/Dockerfile.worker"} {
		t.Run(filepath.Base(df), func(t *testing.T) {
			stages := parseDockerfile(t, filepath.Join(root, df))
			if len(stages) < 2 {
				t.Fatalf("want a multi-stage build, got %d stage(s)", len(stages))
			}
			build, final := stages[0], stages[len(stages)-1]
			var copied, dropped []string
			var built []string
			for _, in := range build.ins {
				switch in.cmd {
				case "COPY":
					fields := strings.Fields(in.args)
					for _, src := range fields[:len(fields)-1] {
						if strings.HasPrefix(src, "--") {
							continue
						}
						src = strings.TrimSuffix(src, "*")
						if _, err := os.Stat(filepath.Join(root, src)); err != nil {
							t.Errorf("COPY %s: not in the repository", src)
						}
						copied = append(copied, strings.TrimSuffix(src, "/"))
					}
				case "RUN":
					for _, m := range regexp.MustCompile(`-dropuse=\./(\S+)`).FindAllStringSubmatch(in.args, -1) {
						dropped = append(dropped, m[1])
					}
					for _, m := range goBuild.FindAllStringSubmatch(in.args, -1) {
						built = append(built, m[2])
					}
				}
			}
			for _, u := range uses {
				if contains(dropped, u) {
					continue
				}
				covered := false
				for _, c := range copied {
					if u == c || strings.HasPrefix(u, c+"/") {
						covered = true
					}
				}
				if !covered {
					t.Errorf("go.work uses ./%s but the build stage neither copies nor drops it: go build fails in the image", u)
				}
			}
			if len(built) < 2 {
				t.Errorf("want the service and the healthcheck built, found %v", built)
			}
			for _, pkg := range built {
				dir := strings.ReplaceAll(strings.TrimPrefix(pkg, "./"), "${SERVICE}", "mediator")
				if m, _ := filepath.Glob(filepath.Join(root, dir, "*.go")); len(m) == 0 {
					t.Errorf("go build %s: no Go package at %s", pkg, dir)
				}
			}

			var user, health, entry string
			labels := ""
			for _, in := range final.ins {
				switch in.cmd {
				case "USER":
					user = in.args
				case "HEALTHCHECK":
					health = in.args
				case "LABEL":
					labels += in.args + " "
				case "ENTRYPOINT":
					entry = in.args
				}
			}
			if uid, _, _ := strings.Cut(user, ":"); uid == "" || uid == "root" || uid == "0" {
				t.Errorf("runtime stage runs as %q; want a non-root user", user)
			}
			if !strings.Contains(health, "/usr/local/bin/healthcheck") || !strings.Contains(health, "/readyz") {
				t.Errorf("HEALTHCHECK %q does not run the healthcheck binary on /readyz", health)
			}
			if !strings.Contains(labels, "org.opencontainers.image.version=") || !strings.Contains(labels, "${VERSION}") {
				t.Errorf("no version label: %s", labels)
			}
			if entry == "" {
				t.Error("no ENTRYPOINT")
			}
			if _, ok := dockerEnv(t, filepath.Join(root, df))["MEDIUS_ADMIN_ADDR"]; !ok {
				t.Error("the image does not set MEDIUS_ADMIN_ADDR, which the service and its healthcheck share")
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
