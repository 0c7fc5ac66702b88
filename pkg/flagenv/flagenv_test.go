package flagenv

import (
	"flag"
	"testing"
	"time"
)

func TestEnvFillsUnsetFlags(t *testing.T) {
	t.Setenv("MEDIUS_NATS_URL", "nats://env:4222")
	t.Setenv("MEDIUS_GRPC_ADDR", "env:1")
	t.Setenv("MEDIUS_LEASE_TTL", "3s")
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	natsURL := fs.String("nats-url", "nats://default", "")
	grpcAddr := fs.String("grpc-addr", "default", "")
	ttl := fs.Duration("lease-ttl", time.Second, "")
	other := fs.String("other", "default", "")
	if err := Parse(fs, []string{"--grpc-addr", "flag:2"}); err != nil {
		t.Fatal(err)
	}
	if *natsURL != "nats://env:4222" || *grpcAddr != "flag:2" || *ttl != 3*time.Second || *other != "default" {
		t.Fatalf("got nats=%q grpc=%q ttl=%v other=%q", *natsURL, *grpcAddr, *ttl, *other)
	}
}

func TestBadEnvValueNamesVariable(t *testing.T) {
	t.Setenv("MEDIUS_LEASE_TTL", "soon")
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Duration("lease-ttl", time.Second, "")
	err := Parse(fs, nil)
	if err == nil || !contains(err.Error(), "MEDIUS_LEASE_TTL") {
		t.Fatalf("err = %v, want it to name MEDIUS_LEASE_TTL", err)
	}
}

func TestList(t *testing.T) {
	got := List(" a, ,b ,")
	if len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("List = %q", got)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
