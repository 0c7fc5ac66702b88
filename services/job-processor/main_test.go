package main

import (
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	t.Setenv("MEDIUS_QUEUE_TIMEOUT", "5s")
	t.Setenv("MEDIUS_REGISTRY_ADDR", "registry:9091")
	cfg, err := parseConfig([]string{"--etcd-endpoints", "http://a:2379, http://b:2379", "--registry-addr", "flag:9091"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.QueueTimeout != 5*time.Second {
		t.Errorf("queue timeout = %v, want it from the environment", cfg.QueueTimeout)
	}
	if cfg.RegistryAddr != "flag:9091" {
		t.Errorf("registry addr = %q, want the flag to win", cfg.RegistryAddr)
	}
	if len(cfg.EtcdEndpoints) != 2 || cfg.EtcdEndpoints[1] != "http://b:2379" {
		t.Errorf("etcd endpoints = %q", cfg.EtcdEndpoints)
	}
	if cfg.AdminAddr != "127.0.0.1:9192" {
		t.Errorf("admin addr default = %q", cfg.AdminAddr)
	}
	for _, args := range [][]string{{"--queue-timeout", "0s"}, {"--etcd-endpoints", ""}, {"extra"}, {"--scheduled-delay", "3s"}} {
		if _, err := parseConfig(args); err == nil {
			t.Errorf("parseConfig(%q) accepted", args)
		}
	}
}
