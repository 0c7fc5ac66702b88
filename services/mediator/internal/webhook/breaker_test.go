package webhook

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// A breaker opens after BreakAfter time-outs in a row, lets one probe
// through once its cool-down has passed, opens again for twice as long
// when that one times out, and closes when one succeeds; quick failures
// do not count. It is remembered only while it holds something back: a
// success forgets the host, a host left alone for MaxDelay is forgotten,
// and past maxBreakers hosts a new one is not remembered (it goes
// unprotected) rather than the map growing.
func TestBreakerStatesAndMemory(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	cfg := Config{}
	cfg.defaults() // Timeout 10s, MaxDelay 5m, BreakAfter 3
	b := newBreakers(cfg, func() time.Time { return now })
	timeout := fmt.Errorf("post notification: %w after 10s", errTimedOut)
	refused := errors.New("connection refused")
	k := breakerKey{"acme", "hooks.example.com"}
	record := func(probe bool, err error, want transition) {
		t.Helper()
		if got, _ := b.record(k, probe, err); got != want {
			t.Fatalf("record(probe %v, %v): transition %d, want %d", probe, err, got, want)
		}
	}
	admit := func(wantProbe, wantErr bool) {
		t.Helper()
		probe, err := b.admit(k)
		if probe != wantProbe || (err != nil) != wantErr {
			t.Fatalf("admit: probe %v, err %v; want probe %v, an error %v", probe, err, wantProbe, wantErr)
		}
	}

	record(false, timeout, unchanged)
	record(false, timeout, unchanged)
	record(false, nil, unchanged)
	if len(b.m) != 0 {
		t.Fatalf("%d hosts remembered after a success, want 0", len(b.m))
	}
	record(false, timeout, unchanged)
	record(false, refused, unchanged) // neither counts nor resets
	record(false, timeout, unchanged)
	record(false, timeout, opened)
	admit(false, true)
	if err := b.check(k); err == nil {
		t.Fatal("check passed an open breaker")
	}

	now = now.Add(3 * cfg.Timeout)
	admit(true, false)
	admit(false, true) // one probe at a time
	record(true, timeout, reopened)
	now = now.Add(3*cfg.Timeout*2 - time.Millisecond)
	admit(false, true) // twice as long
	now = now.Add(time.Millisecond)
	admit(true, false)
	record(true, refused, unchanged) // the next one due probes again
	admit(true, false)
	record(true, nil, closed)
	admit(false, false)
	if len(b.m) != 0 {
		t.Fatalf("%d hosts remembered once closed, want 0", len(b.m))
	}

	record(false, timeout, unchanged)
	now = now.Add(cfg.MaxDelay)
	b.prune()
	if len(b.m) != 0 {
		t.Fatalf("%d hosts remembered after MaxDelay without a time-out, want 0", len(b.m))
	}

	for i := range maxBreakers {
		for range cfg.BreakAfter {
			b.record(breakerKey{"acme", fmt.Sprintf("host-%d", i)}, false, timeout)
		}
	}
	record(false, timeout, unchanged)
	if len(b.m) != maxBreakers {
		t.Fatalf("%d hosts remembered, want at most %d", len(b.m), maxBreakers)
	}
	if _, ok := b.m[k]; ok {
		t.Fatal("a new host remembered while every one remembered is open")
	}
	now = now.Add(3*cfg.Timeout + cfg.MaxDelay) // every cool-down over for MaxDelay
	record(false, timeout, unchanged)
	if len(b.m) != 1 {
		t.Fatalf("%d hosts remembered after making room, want the new one only", len(b.m))
	}
}

// A breaker, as PerEndpoint, guards one host and port: a tenant's
// endpoint on the same host but another port (https's 443, not http's 80)
// has one of its own, so that a hanging one does not fail the other's
// notifications without a POST; the same host and port, however spelled
// (the default port named or not, the host's case, user info), shares one.
// (http://h and https://h shared one; http://h and http://h:80 did not.)
func TestEndpointHostIsHostAndPort(t *testing.T) {
	same := [][]string{
		{"http://hooks.example.com/a", "http://hooks.example.com:80/b", "HTTP://Hooks.Example.COM/c", "http://user:pw@hooks.example.com/d"},
		{"https://hooks.example.com/a", "https://hooks.example.com:443/b"},
		{"http://hooks.example.com:8080/a", "https://hooks.example.com:8080/b"},
		{"http://[2001:DB8::1]/a", "http://[2001:db8::1]:80/b"},
	}
	seen := map[string]int{}
	for i, group := range same {
		for _, endpoint := range group {
			host := endpointHost(endpoint)
			if j, ok := seen[host]; ok && j != i {
				t.Fatalf("%s guarded as %s, as the endpoints of %v", endpoint, host, same[j])
			}
			seen[host] = i
			if want := endpointHost(group[0]); host != want {
				t.Fatalf("%s guarded as %s, %s as %s: want one host and port", endpoint, host, group[0], want)
			}
		}
	}
}
