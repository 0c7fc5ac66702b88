package deploytest

import (
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/medius-platform/medius/pkg/devstack"
	"github.com/medius-platform/medius/pkg/flagenv"
)

// required lists, per service binary, the settings a container must give it:
// flags whose built-in default only works on a developer's machine (loopback
// listen and dial addresses) or that have no default at all. This table is the
// one place the compose file and the Kubernetes manifests are checked against.
var required = map[string][]string{
	"service-registry": {"nats-url", "etcd-endpoints", "grpc-addr", "admin-addr"},
	"mediator":         {"nats-url", "etcd-endpoints", "registry-addr", "grpc-addr", "http-addr", "admin-addr", "bootstrap-api-key"},
	"job-processor":    {"nats-url", "etcd-endpoints", "registry-addr", "admin-addr"},
	"job-worker":       {"nats-url", "registry-addr", "admin-addr", "file-roots"},
}

// listenFlags must not be given a loopback address in a container, where
// nothing else could reach it.
var listenFlags = map[string]bool{"grpc-addr": true, "http-addr": true, "admin-addr": true}

// images maps an image name to the Dockerfile (and SERVICE build argument)
// that builds it.
var images = map[string]struct{ dockerfile, service string }{
	"medius/service-registry": {"deploy/docker/Dockerfile", "service-registry"},
	"medius/mediator":         {"deploy/docker/Dockerfile", "mediator"},
	"medius/job-processor":    {"deploy/docker/Dockerfile", "job-processor"},
	"medius/job-worker":       {"deploy/docker/Dockerfile.worker", "job-worker"},
}

var flagLine = regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`)

var (
	flagsOnce sync.Once
	flagsOf   map[string]map[string]bool
	flagsErr  error
)

// declaredFlags runs every built service binary with -h and returns the flags
// each declares, so the checks follow the binaries, not a copy of their flags.
func declaredFlags(t *testing.T) map[string]map[string]bool {
	t.Helper()
	bin := devstack.BuildBinaries(t)
	flagsOnce.Do(func() {
		flagsOf = map[string]map[string]bool{}
		for _, s := range devstack.Services {
			// -h exits non-zero for some binaries; the usage text is what counts.
			out, _ := exec.Command(filepath.Join(bin, s), "-h").CombinedOutput()
			m := map[string]bool{}
			for _, f := range flagLine.FindAllStringSubmatch(string(out), -1) {
				m[f[1]] = true
			}
			if len(m) == 0 {
				flagsErr = &usageError{s, string(out)}
				return
			}
			flagsOf[s] = m
		}
	})
	if flagsErr != nil {
		t.Fatal(flagsErr)
	}
	return flagsOf
}

type usageError struct{ service, out string }

func (e *usageError) Error() string { return e.service + " -h printed no flags:\n" + e.out }

// checkSettings checks the MEDIUS_* environment env given to a container of
// service: every variable names a flag the binary declares, every required
// setting is there and non-empty, and listen addresses are not loopback.
func checkSettings(t *testing.T, where, service string, env map[string]string) {
	t.Helper()
	flags := declaredFlags(t)[service]
	if flags == nil {
		t.Errorf("%s: unknown service binary %q", where, service)
		return
	}
	byEnv := map[string]string{}
	for f := range flags {
		byEnv[flagenv.EnvName(f)] = f
	}
	var names []string
	for k := range env {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if !strings.HasPrefix(k, "MEDIUS_") {
			continue
		}
		if _, ok := byEnv[k]; !ok {
			t.Errorf("%s: %s sets %s, which no flag of %s reads", where, service, k, service)
		}
	}
	for _, f := range required[service] {
		if !flags[f] {
			t.Errorf("required setting --%s is not a flag of %s any more: update the table", f, service)
			continue
		}
		v := env[flagenv.EnvName(f)]
		if strings.TrimSpace(v) == "" {
			t.Errorf("%s: %s needs %s (--%s)", where, service, flagenv.EnvName(f), f)
			continue
		}
		if listenFlags[f] {
			host, _, err := net.SplitHostPort(v)
			if err != nil {
				t.Errorf("%s: %s %s=%q is not host:port", where, service, flagenv.EnvName(f), v)
			} else if host == "localhost" || strings.HasPrefix(host, "127.") || host == "::1" {
				t.Errorf("%s: %s listens on loopback (%s=%q): unreachable from outside the container", where, service, flagenv.EnvName(f), v)
			}
		}
	}
}

// portOf returns the port of a host:port setting.
func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return port
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := devstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}
