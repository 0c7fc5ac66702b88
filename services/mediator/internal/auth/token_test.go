package auth

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/grpc/codes"
)

type clients map[string]bool

func (c clients) ClientExists(_ context.Context, id string) (bool, error) { return c[id], nil }

func TestTokens(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	toks := NewTokens([]byte("k1-0123456789abcdef"), time.Hour)
	toks.now = func() time.Time { return now }
	a := NewAuthenticator(nil, WithTokens(toks, clients{"c1": true}), WithAdminKey("the-admin"))
	a.now = toks.now
	ctx := context.Background()

	tok, exp, err := toks.Issue("acme", "c1")
	if err != nil || !exp.Equal(now.Add(time.Hour)) || !LooksLikeToken(tok) {
		t.Fatalf("Issue = %q %v %v", tok, exp, err)
	}
	p, err := a.Authenticate(ctx, tok)
	if err != nil || p.Tenant != "acme" || p.ClientID != "c1" || p.Admin {
		t.Fatalf("Authenticate = %+v %v", p, err)
	}
	if p, err := a.Authenticate(ctx, "the-admin"); err != nil || !p.Admin || p.Tenant != "" {
		t.Fatalf("admin = %+v %v", p, err)
	}

	unauth := func(what, tok, detail string) {
		t.Helper()
		_, err := a.Authenticate(ctx, tok)
		var pe *problem.Error
		if !errors.As(err, &pe) || pe.Code != codes.Unauthenticated || pe.Detail != detail {
			t.Fatalf("%s: %v, want Unauthenticated %q", what, err, detail)
		}
	}
	// Signed by another key.
	other := NewTokens([]byte("k2-0123456789abcdef"), time.Hour)
	other.now = toks.now
	forged, _, _ := other.Issue("acme", "c1")
	unauth("other key", forged, "invalid token")
	// A revoked client's token.
	gone, _, _ := toks.Issue("acme", "c2")
	unauth("revoked client", gone, "token revoked")
	// Expired.
	now = now.Add(time.Hour + 10*time.Second)
	unauth("expired", tok, "token expired")
}
