// Command healthcheck is the container health probe of the Medius images. The
// runtime images have no shell, curl or wget (distroless), so Docker's
// HEALTHCHECK runs this static binary instead: it asks the service's admin
// server for /readyz (or --path) and exits 0 on 200, 1 otherwise.
//
// It finds the admin server the way the service does: --admin-addr, else
// MEDIUS_ADMIN_ADDR (the variable the service itself reads in the container),
// else 127.0.0.1:9190. A wildcard listen host (":9190", "0.0.0.0:9190") is
// probed on loopback.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("admin-addr", os.Getenv("MEDIUS_ADMIN_ADDR"), "admin address of the service (default $MEDIUS_ADMIN_ADDR, else 127.0.0.1:9190)")
	path := fs.String("path", "/readyz", "path to probe: /readyz (can take work) or /healthz (alive)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long the probe may take")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	url, err := probeURL(*addr, *path)
	if err != nil {
		fmt.Fprintln(stderr, "healthcheck:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintln(stderr, "healthcheck:", err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "healthcheck:", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "healthcheck: %s: %d %s\n", url, resp.StatusCode, body)
		return 1
	}
	return 0
}

// probeURL turns a listen address into the URL to probe.
func probeURL(addr, path string) (string, error) {
	if addr == "" {
		addr = "127.0.0.1:9190"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("admin address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	if path == "" || path[0] != '/' {
		path = "/" + path
	}
	return "http://" + net.JoinHostPort(host, port) + path, nil
}
