package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	t.Setenv("MEDIUS_BOOTSTRAP_API_KEY", "from-env")
	t.Setenv("MEDIUS_GRPC_ADDR", "127.0.0.1:1")
	cfg, err := parseFlags([]string{"--grpc-addr", "127.0.0.1:2", "--etcd-endpoints", "http://a:1, http://b:2"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BootstrapAPIKey != "from-env" || cfg.GRPCAddr != "127.0.0.1:2" || cfg.BootstrapTenant != "default" ||
		cfg.HTTPAddr != "127.0.0.1:8080" || cfg.RegistryAddr != "127.0.0.1:9091" || cfg.AdminAddr != "127.0.0.1:9190" ||
		!slices.Equal(cfg.EtcdEndpoints, []string{"http://a:1", "http://b:2"}) {
		t.Fatalf("cfg = %+v", cfg)
	}
}

// The sweep and retention can be tuned, never to a value that would quietly
// mean something else.
func TestParseFlagsSweepAndRetention(t *testing.T) {
	cfg, err := parseFlags([]string{"--sweep-interval", "2s", "--sweep-lookback", "1h", "--sweep-max-pending", "1000", "--retention-interval", "10m"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Sweep.Interval != 2*time.Second || cfg.Sweep.Lookback != time.Hour || cfg.Sweep.MaxPending != 1000 || cfg.Retention.Interval != 10*time.Minute {
		t.Fatalf("sweep %+v retention %+v", cfg.Sweep, cfg.Retention)
	}
	for _, args := range [][]string{{"--sweep-interval", "0s"}, {"--retention-interval", "-1m"}, {"--sweep-max-pending", "0"}, {"--retention", "0s"}} {
		if _, err := parseFlags(args); err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: err %v, want one naming %s", args, err, args[0])
		}
	}
}

// The bootstrap tenant's roots come as a comma list, from the flag or its
// variable; a bad one stops the start naming the flag.
func TestParseFlagsBootstrapLocatorRoots(t *testing.T) {
	t.Setenv("MEDIUS_BOOTSTRAP_LOCATOR_ROOTS", "file:///media/, s3://media-bucket/default/")
	cfg, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.BootstrapLocatorRoots, []string{"file:///media/", "s3://media-bucket/default/"}) {
		t.Fatalf("roots %q", cfg.BootstrapLocatorRoots)
	}
	if _, err := parseFlags([]string{"--bootstrap-locator-roots", "file:///media/,https://cdn.example.com/"}); err == nil ||
		!strings.Contains(err.Error(), "--bootstrap-locator-roots") || !strings.Contains(err.Error(), `"https://cdn.example.com/"`) {
		t.Fatalf("an http root: %v, want refused naming the flag and the root", err)
	}
	t.Setenv("MEDIUS_BOOTSTRAP_LOCATOR_ROOTS", "")
	if cfg, err := parseFlags(nil); err != nil || cfg.BootstrapLocatorRoots != nil {
		t.Fatalf("no roots: %q, %v, want none (left as an admin set them)", cfg.BootstrapLocatorRoots, err)
	}
}
