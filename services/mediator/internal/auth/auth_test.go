package auth_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func code(err error) codes.Code { return status.Code(problem.ToStatus(context.Background(), err)) }

func TestAuthenticate(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	keys := auth.NewEtcdKeys(env.EtcdCli)
	if err := keys.Put(ctx, auth.HashKey("s3cret"), auth.Record{Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}
	// Only the hash is stored, never the key.
	resp, err := env.EtcdCli.Get(ctx, auth.KeyPrefix+"s3cret")
	if err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("key stored in clear: %v %v", resp, err)
	}
	a := auth.NewAuthenticator(keys, auth.WithTTL(100*time.Millisecond, 50*time.Millisecond))

	p, err := a.Authenticate(ctx, "s3cret")
	if err != nil || p.Tenant != "acme" || p.KeyHash != auth.HashKey("s3cret") {
		t.Fatalf("Authenticate = %+v, %v", p, err)
	}
	for _, tc := range []struct{ key, detail string }{{"", "missing bearer credentials"}, {"nope", "invalid API key"}} {
		_, err := a.Authenticate(ctx, tc.key)
		var pe *problem.Error
		if !errors.As(err, &pe) || pe.Code != codes.Unauthenticated || pe.Detail != tc.detail {
			t.Errorf("Authenticate(%q) = %v, want Unauthenticated %q", tc.key, err, tc.detail)
		}
	}

	// Revocation takes effect once the cached answer expires.
	if err := keys.Delete(ctx, auth.HashKey("s3cret")); err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 5*time.Second, "revoked key refused", func() bool {
		_, err := a.Authenticate(ctx, "s3cret")
		return code(err) == codes.Unauthenticated
	})
	// A newly issued key works soon although it was refused a moment ago.
	if err := keys.Put(ctx, auth.HashKey("nope"), auth.Record{Tenant: "other"}); err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 5*time.Second, "new key accepted", func() bool {
		p, err := a.Authenticate(ctx, "nope")
		return err == nil && p.Tenant == "other"
	})
}

func TestAuthenticateStoreDown(t *testing.T) {
	a := auth.NewAuthenticator(brokenStore{})
	_, err := a.Authenticate(context.Background(), "k")
	if code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want Unavailable", err)
	}
}

type brokenStore struct{}

func (brokenStore) Lookup(context.Context, string) (auth.Record, error) {
	return auth.Record{}, errors.New("etcd down")
}

type mapStore map[string]string

func (m mapStore) Lookup(_ context.Context, hash string) (auth.Record, error) {
	if t, ok := m[hash]; ok {
		return auth.Record{Tenant: t}, nil
	}
	return auth.Record{}, auth.ErrUnknownKey
}

func TestUnaryInterceptor(t *testing.T) {
	a := auth.NewAuthenticator(mapStore{auth.HashKey("k1"): "acme"})
	icpt := a.UnaryServerInterceptor()
	handler := func(ctx context.Context, _ any) (any, error) {
		return auth.TenantFrom(ctx)
	}
	call := func(method string, md metadata.MD) (any, error) {
		ctx := metadata.NewIncomingContext(context.Background(), md)
		return icpt(ctx, nil, &grpc.UnaryServerInfo{FullMethod: method}, handler)
	}
	got, err := call("/medius.jobs.v1.JobService/GetJob", metadata.Pairs("authorization", "Bearer k1"))
	if err != nil || got != "acme" {
		t.Fatalf("with key: %v, %v", got, err)
	}
	if got, err := call("/medius.jobs.v1.JobService/GetJob", metadata.Pairs("authorization", "bearer k1")); err != nil || got != "acme" {
		t.Fatalf("scheme is case-insensitive: %v, %v", got, err)
	}
	for name, md := range map[string]metadata.MD{
		"missing":   nil,
		"basic":     metadata.Pairs("authorization", "Basic k1"),
		"wrong key": metadata.Pairs("authorization", "Bearer k2"),
	} {
		if _, err := call("/medius.jobs.v1.JobService/GetJob", md); code(err) != codes.Unauthenticated {
			t.Errorf("%s: err = %v, want Unauthenticated", name, err)
		}
	}
	// Health is exempt: it runs without credentials.
	var reached bool
	_, err = icpt(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/grpc.health.v1.Health/Check"},
		func(context.Context, any) (any, error) { reached = true; return nil, nil })
	if err != nil || !reached {
		t.Fatalf("health not exempt: %v", err)
	}
}
