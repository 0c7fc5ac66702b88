package app

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/grpcx"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	a, err := devenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// With NATS not (yet) reachable the registry API already serves, and
// /readyz says why the process is not ready; NATS coming up makes it ready.
func TestServesRegistryWhileNATSIsDown(t *testing.T) {
	dir := t.TempDir()
	etcd, err := devenv.StartEtcd(dir+"/etcd", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	natsPort, err := devenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Defaults()
	cfg.NATSURL = fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	cfg.EtcdEndpoints = etcd.Endpoints
	cfg.GRPCAddr, cfg.AdminAddr = freeAddr(t), freeAddr(t)
	cfg.LogFormat = "text"
	cfg.LogLevel = "error"

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})

	readyz := func() (int, string) {
		resp, err := http.Get("http://" + cfg.AdminAddr + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually(t, 10*time.Second, "/readyz answers 503 naming nats", func() bool {
		code, body := readyz()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "nats")
	})

	conn, err := grpcx.Dial(cfg.GRPCAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := registryv1.NewRegistryServiceClient(conn)
	if _, err := client.PutJobProfile(t.Context(), &registryv1.PutJobProfileRequest{
		Profile: &registryv1.JobProfile{Name: "p", JobType: "AIJob"}}); err != nil {
		t.Fatalf("registry API without NATS: %v", err)
	}

	n, err := devenv.StartNATS(dir+"/nats", natsPort)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	eventually(t, 15*time.Second, "/readyz 200 once NATS is up", func() bool {
		code, _ := readyz()
		return code == http.StatusOK
	})
}

func TestValidateNamesTheFlag(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.NATSURL = "" }, "--nats-url"},
		{func(c *Config) { c.EtcdEndpoints = nil }, "--etcd-endpoints"},
		{func(c *Config) { c.EtcdEndpoints = []string{"::bad"} }, "--etcd-endpoints"},
		{func(c *Config) { c.AdminAddr = "9191" }, "--admin-addr"},
		{func(c *Config) { c.LeaseTTL = 500 * time.Millisecond }, "--lease-ttl"},
		{func(c *Config) { c.LogLevel = "loud" }, "--log-level"},
	} {
		cfg := Defaults()
		tc.mod(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want an error naming %s", err, tc.want)
		}
	}
	if err := Defaults().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
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
