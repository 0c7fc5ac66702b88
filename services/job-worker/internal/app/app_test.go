package app

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/devenv"
)

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		mod  func(*Config)
		msg  string
	}{
		{"defaults", func(*Config) {}, ""},
		{"file root", func(c *Config) { c.FileRoots = []string{dir} }, ""},
		{"capacity", func(c *Config) { c.Capacity = 0 }, "--capacity"},
		{"service", func(c *Config) { c.Service = "" }, "--service"},
		{"missing root", func(c *Config) { c.FileRoots = []string{dir + "/nope"} }, "--file-roots"},
		{"s3", func(c *Config) {
			c.S3.Endpoint, c.S3.AccessKey, c.S3.SecretKey = "http://127.0.0.1:7070", "k", "s"
		}, ""},
		{"s3 endpoint", func(c *Config) { c.S3.Endpoint = "127.0.0.1:7070" }, "--s3-endpoint"},
		{"s3 half credentials", func(c *Config) { c.S3.AccessKey = "k" }, "--s3-secret-key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := Defaults()
			tt.mod(&c)
			err := c.Validate()
			if tt.msg == "" && err != nil || tt.msg != "" && (err == nil || !strings.Contains(err.Error(), tt.msg)) {
				t.Fatalf("Validate() = %v, want mention of %q", err, tt.msg)
			}
		})
	}
	if a, b := DefaultInstanceID(), DefaultInstanceID(); a == b {
		t.Errorf("instance ids repeat: %s", a)
	}
}

// TestNotReadyWithoutRegistry: with NATS up but no registry, the worker is
// alive, not ready (it waits for the registry), and stops cleanly.
func TestNotReadyWithoutRegistry(t *testing.T) {
	n, err := devenv.StartNATS(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	registry, _ := devenv.FreeAddr()
	admin, _ := devenv.FreeAddr()
	cfg := Defaults()
	cfg.NATSURL, cfg.RegistryAddr, cfg.AdminAddr = n.URL, registry, admin
	cfg.LogLevel = "error"

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	defer cancel()

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + admin + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := get("/readyz")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "not registered") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz = %d %s, want 503 naming the registry", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("healthz = %d", code)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil on shutdown", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}
