package auth

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/medius-platform/medius/pkg/problem"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// SigningKeyKey is where the token signing key lives in etcd when none is
// configured, so every mediator replica signs and verifies with the same one.
const SigningKeyKey = "/medius/auth/signing-key"

const tokenIssuer = "medius"

// Claims are a Medius access token's claims: the tenant is the subject, and
// cid names the API key it was exchanged for (checked on use, so revoking
// the key ends the token).
type Claims struct {
	ClientID string `json:"cid"`
	jwt.RegisteredClaims
}

// TokenClaims is what a valid token says.
type TokenClaims struct {
	Tenant   string
	ClientID string
	Expires  time.Time
}

// Tokens issues and verifies HS256 JWTs.
type Tokens struct {
	key []byte
	ttl time.Duration
	now func() time.Time
}

// NewTokens signs with key; tokens live ttl.
func NewTokens(key []byte, ttl time.Duration) *Tokens {
	if ttl <= 0 {
		ttl = time.Hour
	}
	return &Tokens{key: key, ttl: ttl, now: time.Now}
}

// TTL is the lifetime of issued tokens.
func (t *Tokens) TTL() time.Duration { return t.ttl }

// Issue returns a token for tenant's API key clientID and its expiry.
func (t *Tokens) Issue(tenant, clientID string) (string, time.Time, error) {
	now := t.now()
	exp := now.Add(t.ttl)
	jti := make([]byte, 12)
	if _, err := rand.Read(jti); err != nil {
		return "", time.Time{}, fmt.Errorf("token id: %w", err)
	}
	c := Claims{ClientID: clientID, RegisteredClaims: jwt.RegisteredClaims{
		Issuer: tokenIssuer, Subject: tenant, ID: hex.EncodeToString(jti),
		IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)), ExpiresAt: jwt.NewNumericDate(exp),
	}}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(t.key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("sign token: %w", err)
	}
	return s, exp, nil
}

// Parse verifies tok: signature, algorithm, issuer, expiry.
func (t *Tokens) Parse(tok string) (TokenClaims, error) {
	var c Claims
	_, err := jwt.ParseWithClaims(tok, &c, func(*jwt.Token) (any, error) { return t.key, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}), jwt.WithIssuer(tokenIssuer),
		jwt.WithExpirationRequired(), jwt.WithTimeFunc(t.now), jwt.WithLeeway(5*time.Second))
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return TokenClaims{}, problem.Unauthenticated("token expired")
	case err != nil:
		return TokenClaims{}, problem.Unauthenticated("invalid token")
	case c.Subject == "" || c.ClientID == "":
		return TokenClaims{}, problem.Unauthenticated("invalid token")
	}
	return TokenClaims{Tenant: c.Subject, ClientID: c.ClientID, Expires: c.ExpiresAt.Time}, nil
}

// LooksLikeToken tells a JWT (three base64url parts, a JSON header) from an
// API key, which has no dots.
func LooksLikeToken(s string) bool {
	return strings.Count(s, ".") == 2 && strings.HasPrefix(s, "eyJ")
}

// SharedSigningKey returns the signing key stored in etcd, creating a random
// one first if there is none (the first replica to start wins).
func SharedSigningKey(ctx context.Context, cli *clientv3.Client) ([]byte, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	fresh := hex.EncodeToString(b)
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(SigningKeyKey), "=", 0)).
		Then(clientv3.OpPut(SigningKeyKey, fresh)).Else(clientv3.OpGet(SigningKeyKey)).Commit()
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if resp.Succeeded {
		return []byte(fresh), nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return nil, errors.New("signing key vanished")
	}
	return kvs[0].Value, nil
}
