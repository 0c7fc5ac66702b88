package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestProbeURL(t *testing.T) {
	for addr, want := range map[string]string{
		"":               "http://127.0.0.1:9190/readyz",
		":9191":          "http://127.0.0.1:9191/readyz",
		"0.0.0.0:9192":   "http://127.0.0.1:9192/readyz",
		"[::]:9193":      "http://127.0.0.1:9193/readyz",
		"10.1.2.3:9194":  "http://10.1.2.3:9194/readyz",
		"localhost:9195": "http://localhost:9195/readyz",
	} {
		got, err := probeURL(addr, "/readyz")
		if err != nil || got != want {
			t.Errorf("probeURL(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
	if _, err := probeURL("no-port", "/readyz"); err == nil {
		t.Error("an address without a port was accepted")
	}
}

// TestExitCodes probes a real HTTP server: ready answers 0, not ready 1,
// nothing listening 1, a bad address 2.
func TestExitCodes(t *testing.T) {
	ready := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" && !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if r.URL.Path != "/readyz" && r.URL.Path != "/healthz" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		_, _ = io.WriteString(w, `{"status":"ok"}`)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	if code := run([]string{"--admin-addr", addr}, io.Discard); code != 0 {
		t.Errorf("ready server: exit %d, want 0", code)
	}
	ready = false
	if code := run([]string{"--admin-addr", addr}, io.Discard); code != 1 {
		t.Errorf("not ready server: exit %d, want 1", code)
	}
	if code := run([]string{"--admin-addr", addr, "--path", "/healthz"}, io.Discard); code != 0 {
		t.Errorf("alive server on /healthz: exit %d, want 0", code)
	}
	t.Setenv("MEDIUS_ADMIN_ADDR", addr)
	if code := run([]string{"--path", "/healthz"}, io.Discard); code != 0 {
		t.Errorf("address from MEDIUS_ADMIN_ADDR: exit %d, want 0", code)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	if code := run([]string{"--admin-addr", closed}, io.Discard); code != 1 {
		t.Errorf("nothing listening: exit %d, want 1", code)
	}
	if code := run([]string{"--admin-addr", "bad"}, io.Discard); code != 2 {
		t.Errorf("bad address: exit %d, want 2", code)
	}
}
