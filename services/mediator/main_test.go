package main

import (
	"slices"
	"testing"
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
