package main

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/grpcx"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

var (
	binDir   string
	buildBin = sync.OnceValues(func() (string, error) {
		bin := filepath.Join(binDir, "service-registry")
		out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			return "", errors.New("go build: " + err.Error() + "\n" + string(out))
		}
		return bin, nil
	})
)

func TestMain(m *testing.M) {
	var err error
	if binDir, err = os.MkdirTemp("", "service-registry-bin"); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(binDir)
	os.Exit(code)
}

func binary(t *testing.T) string {
	t.Helper()
	bin, err := buildBin()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// syncBuffer collects a child's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %s", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestBinaryServesAndStopsOnSIGTERM(t *testing.T) {
	t.Parallel()
	env := devenv.Start(t)
	bin := binary(t)
	grpcAddr, err := devenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	adminAddr, err := devenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--nats-url", env.NATS.URL,
		"--etcd-endpoints", strings.Join(env.Etcd.Endpoints, ","),
		"--grpc-addr", grpcAddr,
		"--lease-ttl", "3s",
		"--log-format", "text",
	)
	// The admin address comes from the environment, as in a container.
	cmd.Env = append(os.Environ(), "MEDIUS_ADMIN_ADDR="+adminAddr, "MEDIUS_LOG_LEVEL=debug")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() || os.Getenv("SHOW_OUTPUT") != "" {
			t.Logf("service-registry output:\n%s", out.String())
		}
	})

	eventually(t, 20*time.Second, "/readyz 200", func() bool {
		resp, err := http.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	conn, err := grpcx.Dial(grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := t.Context()
	hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: registryv1.RegistryService_ServiceDesc.ServiceName})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v; want SERVING", hc, err)
	}
	client := registryv1.NewRegistryServiceClient(conn)
	reg, err := client.RegisterInstance(ctx, &registryv1.RegisterInstanceRequest{
		Service:  &registryv1.Service{Name: "ffprobe", JobTypes: []string{"AmeJob"}, Profiles: []string{"ExtractTechnicalMetadata"}},
		Instance: &registryv1.ServiceInstance{Id: "ffprobe-1", Capacity: 4},
	})
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	if got := reg.GetTtl().AsDuration(); got != 3*time.Second {
		t.Errorf("ttl = %s, want --lease-ttl 3s", got)
	}
	list, err := client.ListInstances(ctx, &registryv1.ListInstancesRequest{Profile: "ExtractTechnicalMetadata"})
	if err != nil || len(list.GetInstances()) != 1 || list.GetInstances()[0].GetId() != "ffprobe-1" {
		t.Fatalf("list = %v, %v; want ffprobe-1", list, err)
	}
	metrics, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil || metrics.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %v %v", metrics, err)
	}
	metrics.Body.Close()

	stopped := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v, want status 0", err)
		}
		t.Logf("stopped %s after SIGTERM", time.Since(stopped).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatal("still running 15s after SIGTERM")
	}
	if d := time.Since(stopped); d > 5*time.Second {
		t.Errorf("took %s to stop, want well under the 10s hard stop", d)
	}
}

func TestBinaryRefusesBadConfig(t *testing.T) {
	t.Parallel()
	bin := binary(t)
	for _, tc := range []struct {
		args []string
		env  string
		want string
	}{
		{args: []string{"--log-format", "xml"}, want: "--log-format"},
		{args: []string{"--lease-ttl", "0s"}, want: "--lease-ttl"},
		{args: []string{"--grpc-addr", "nowhere"}, want: "--grpc-addr"},
		{env: "MEDIUS_LEASE_TTL=soon", want: "MEDIUS_LEASE_TTL"},
	} {
		cmd := exec.Command(bin, tc.args...)
		cmd.Env = os.Environ()
		if tc.env != "" {
			cmd.Env = append(cmd.Env, tc.env)
		}
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 {
			t.Errorf("%v %s: err = %v, want exit status 2", tc.args, tc.env, err)
		}
		if !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "invalid configuration") {
			t.Errorf("%v %s: output %q does not name %s", tc.args, tc.env, out, tc.want)
		}
	}
}

func TestParseConfigReadsEnvironment(t *testing.T) {
	t.Setenv("MEDIUS_ETCD_ENDPOINTS", "http://a:2379, http://b:2379")
	t.Setenv("MEDIUS_GRPC_ADDR", "0.0.0.0:1")
	cfg, err := parseConfig([]string{"--grpc-addr", "127.0.0.1:2"})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.EtcdEndpoints, " "); got != "http://a:2379 http://b:2379" {
		t.Errorf("etcd endpoints = %q", got)
	}
	if cfg.GRPCAddr != "127.0.0.1:2" {
		t.Errorf("grpc addr = %q, want the flag to win over the environment", cfg.GRPCAddr)
	}
	if cfg.LeaseTTL != 10*time.Second || cfg.AdminAddr != "127.0.0.1:9191" {
		t.Errorf("defaults not applied: %+v", cfg)
	}
}
