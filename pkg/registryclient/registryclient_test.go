package registryclient

// These tests cover what needs no registry. The registration lifecycle
// against the real service-registry is covered by the end-to-end tests.

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/grpcx"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func svc() *registryv1.Service { return &registryv1.Service{Name: "medius-worker"} }
func inst() *registryv1.ServiceInstance {
	return &registryv1.ServiceInstance{Id: "w1", Capacity: 4}
}

func TestNewValidates(t *testing.T) {
	client := registryv1.NewRegistryServiceClient(nil)
	tests := []struct {
		name   string
		client Client
		svc    *registryv1.Service
		inst   *registryv1.ServiceInstance
		msg    string
	}{
		{"nil client", nil, svc(), inst(), "nil client"},
		{"no service", client, nil, inst(), "service needs a name"},
		{"unnamed service", client, &registryv1.Service{}, inst(), "service needs a name"},
		{"no instance", client, svc(), nil, "instance needs an id"},
		{"instance without id", client, svc(), &registryv1.ServiceInstance{}, "instance needs an id"},
		{"other service", client, svc(), &registryv1.ServiceInstance{Id: "w1", Service: "x"}, "differs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.client, tt.svc, tt.inst, 0)
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want mention of %q", err, tt.msg)
			}
		})
	}
	r, err := New(client, svc(), inst(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Instance().GetService() != "medius-worker" {
		t.Errorf("instance service = %q, want it filled from the service", r.Instance().GetService())
	}
	if r.ttl != DefaultTTL || r.interval() != DefaultTTL/3 {
		t.Errorf("ttl %v interval %v", r.ttl, r.interval())
	}
}

// TestStartWaitsForUnreachableRegistry: with nothing listening, Start keeps
// retrying until its context ends, then reports both.
func TestStartWaitsForUnreachableRegistry(t *testing.T) {
	addr, err := devenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpcx.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	r, err := New(registryv1.NewRegistryServiceClient(cc), svc(), inst(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = r.Start(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last error") {
		t.Fatalf("Start err = %v, want deadline exceeded with the last error", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("Start took %v after its context ended", time.Since(start))
	}
	if r.Registered() {
		t.Error("Registered after a failed Start")
	}
	// Spent: Start returns the same error, Close is a no-op.
	if err2 := r.Start(t.Context()); err2 != err {
		t.Errorf("second Start = %v, want %v", err2, err)
	}
	if err := r.Close(t.Context()); err != nil {
		t.Errorf("Close after failed Start = %v", err)
	}
	if err := r.Close(t.Context()); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// TestPermanentErrorsAreNotRetried runs a gRPC server that has the registry
// API unimplemented (the generated stub, not a fake registry): Unimplemented
// is permanent, so Start and EnsureProfiles return at once.
func TestPermanentErrorsAreNotRetried(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	registryv1.RegisterRegistryServiceServer(s, registryv1.UnimplementedRegistryServiceServer{})
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	cc, err := grpcx.Dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := registryv1.NewRegistryServiceClient(cc)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = Register(ctx, client, svc(), inst(), time.Second)
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("Register err = %v, want Unimplemented", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Register retried a permanent error until the deadline")
	}
	err = EnsureProfiles(ctx, client, &registryv1.JobProfile{Name: "P"})
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "ensure profile P") {
		t.Fatalf("EnsureProfiles err = %v, want Unimplemented naming the profile", err)
	}
	if err := EnsureProfiles(ctx, client, &registryv1.JobProfile{}); err == nil {
		t.Fatal("EnsureProfiles accepted a profile without a name")
	}
}

func TestBackoff(t *testing.T) {
	b := newBackoff(time.Second)
	for i := range 20 {
		d := b.next()
		if d < 50*time.Millisecond || d > time.Second {
			t.Fatalf("step %d: %v out of bounds", i, d)
		}
		if i > 10 && d < time.Second/2 {
			t.Fatalf("step %d: %v below half the cap", i, d)
		}
	}
}

func TestRetryable(t *testing.T) {
	for code, want := range map[codes.Code]bool{
		codes.Unavailable:      true,
		codes.DeadlineExceeded: true,
		codes.InvalidArgument:  false,
		codes.NotFound:         false,
		codes.PermissionDenied: false,
		codes.Unimplemented:    false,
	} {
		if got := retryable(status.Error(code, "x")); got != want {
			t.Errorf("retryable(%v) = %v, want %v", code, got, want)
		}
	}
}
