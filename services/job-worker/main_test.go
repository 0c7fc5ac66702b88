package main

import (
	"slices"
	"testing"
)

func TestParseConfig(t *testing.T) {
	dir1, dir2 := t.TempDir(), t.TempDir()
	t.Setenv("MEDIUS_CAPACITY", "7")
	t.Setenv("MEDIUS_SERVICE", "env-service")
	cfg, err := parseConfig([]string{"--service", "flag-service", "--file-roots", dir1 + ", " + dir2, "--allow-private-urls", "--region", "eu"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Capacity != 7 || cfg.Service != "flag-service" || !cfg.AllowPrivateURLs || cfg.Region != "eu" {
		t.Errorf("cfg = %+v", cfg)
	}
	if !slices.Equal(cfg.FileRoots, []string{dir1, dir2}) {
		t.Errorf("file roots = %v", cfg.FileRoots)
	}
	if cfg.RegistryAddr != "127.0.0.1:9091" || cfg.AdminAddr != "127.0.0.1:9193" || cfg.InstanceID == "" {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	if _, err := parseConfig([]string{"--capacity", "0"}); err == nil {
		t.Error("capacity 0 accepted")
	}
	if _, err := parseConfig([]string{"stray"}); err == nil {
		t.Error("stray argument accepted")
	}
}
