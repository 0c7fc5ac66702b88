// Package auth authenticates callers of the mediator. A client presents an API
// key as a bearer credential; the mediator stores only the key's sha256 (hex)
// in etcd under /medius/apikeys/<hex>, mapped to the tenant the key acts for.
// Interceptors resolve the key once per call and put the caller's Principal in
// the context, so handlers never see credentials.
package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/medius-platform/medius/pkg/problem"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
)

// KeyPrefix is the etcd prefix of API key records (docs/internals.md).
const KeyPrefix = "/medius/apikeys/"

// Principal is who is calling: a tenant (through an API key or a token), or
// the administrator (Admin set, no tenant).
type Principal struct {
	Tenant string
	// KeyHash identifies the credential (for audit logs), never the key.
	KeyHash string
	// ClientID is the API key the credential belongs to, when known.
	ClientID string
	// Admin is the operator credential: it manages tenants and keys but
	// owns no jobs.
	Admin bool
}

// Record is the value stored for an API key.
type Record struct {
	Tenant   string `json:"tenant"`
	ClientID string `json:"clientId,omitempty"`
}

// ErrUnknownKey is returned by a KeyStore for a hash it does not know.
var ErrUnknownKey = errors.New("unknown api key")

// HashKey is the stored form of an API key: sha256, hex encoded.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// EtcdKeys stores API key records in etcd.
type EtcdKeys struct {
	cli *clientv3.Client
}

// NewEtcdKeys uses cli for key records.
func NewEtcdKeys(cli *clientv3.Client) *EtcdKeys { return &EtcdKeys{cli: cli} }

// Put maps the key with hash to tenant; it is an upsert, so bootstrapping the
// same key on every start is harmless.
func (s *EtcdKeys) Put(ctx context.Context, hash string, rec Record) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode api key record: %w", err)
	}
	if _, err := s.cli.Put(ctx, KeyPrefix+hash, string(data)); err != nil {
		return fmt.Errorf("put api key %s: %w", shortHash(hash), err)
	}
	return nil
}

// Delete revokes the key with hash.
func (s *EtcdKeys) Delete(ctx context.Context, hash string) error {
	if _, err := s.cli.Delete(ctx, KeyPrefix+hash); err != nil {
		return fmt.Errorf("delete api key %s: %w", shortHash(hash), err)
	}
	return nil
}

// Lookup returns the record of hash, or ErrUnknownKey.
func (s *EtcdKeys) Lookup(ctx context.Context, hash string) (Record, error) {
	resp, err := s.cli.Get(ctx, KeyPrefix+hash)
	if err != nil {
		return Record{}, fmt.Errorf("get api key %s: %w", shortHash(hash), err)
	}
	if len(resp.Kvs) == 0 {
		return Record{}, ErrUnknownKey
	}
	var rec Record
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil || rec.Tenant == "" {
		// A record we cannot read grants nothing.
		return Record{}, fmt.Errorf("api key %s: bad record: %w", shortHash(hash), errors.Join(err, ErrUnknownKey))
	}
	return rec, nil
}

// KeyStore resolves key hashes.
type KeyStore interface {
	Lookup(ctx context.Context, hash string) (Record, error)
}

// Authenticator resolves bearer credentials to principals, caching answers
// briefly: etcd is not asked on every call, and a revoked key stops working
// within TTL.
type Authenticator struct {
	store       KeyStore
	adminHash   string
	tokens      *Tokens
	clients     ClientChecker
	ttl         time.Duration
	negativeTTL time.Duration
	now         func() time.Time

	mu    sync.Mutex
	cache map[string]cacheEntry
}

type cacheEntry struct {
	rec     Record
	known   bool
	expires time.Time
}

// maxCacheEntries bounds memory when clients try many bad keys.
const maxCacheEntries = 10000

// Option configures an Authenticator.
type Option func(*Authenticator)

// WithTTL sets how long a known key's record is trusted (default 10s) and how
// long an unknown key stays refused without asking again (default 1s, short
// so a freshly issued key works almost at once).
func WithTTL(known, unknown time.Duration) Option {
	return func(a *Authenticator) { a.ttl, a.negativeTTL = known, unknown }
}

// NewAuthenticator resolves keys through store.
func NewAuthenticator(store KeyStore, opts ...Option) *Authenticator {
	a := &Authenticator{store: store, ttl: 10 * time.Second, negativeTTL: time.Second, now: time.Now, cache: map[string]cacheEntry{}}
	for _, o := range opts {
		o(a)
	}
	return a
}

// WithAdminKey makes key the administrator credential (empty: none).
func WithAdminKey(key string) Option {
	return func(a *Authenticator) {
		if key != "" {
			a.adminHash = HashKey(key)
		}
	}
}

// WithTokens accepts the signed tokens of t as bearer credentials; a token
// whose API key clients no longer knows (revoked) is refused.
func WithTokens(t *Tokens, clients ClientChecker) Option {
	return func(a *Authenticator) { a.tokens, a.clients = t, clients }
}

// ClientChecker tells whether an API key (client id) still exists.
type ClientChecker interface {
	ClientExists(ctx context.Context, clientID string) (bool, error)
}

// Authenticate resolves a bearer credential (the admin key, a token, or an
// API key) to its principal. Errors are domain errors: Unauthenticated for a
// bad credential, Unavailable when the store is down.
func (a *Authenticator) Authenticate(ctx context.Context, key string) (Principal, error) {
	if key == "" {
		return Principal{}, problem.Unauthenticated("missing bearer credentials")
	}
	hash := HashKey(key)
	if a.adminHash != "" && subtle.ConstantTimeCompare([]byte(hash), []byte(a.adminHash)) == 1 {
		return Principal{Admin: true, KeyHash: hash}, nil
	}
	if a.tokens != nil && LooksLikeToken(key) {
		return a.authenticateToken(ctx, key)
	}
	now := a.now()
	a.mu.Lock()
	e, ok := a.cache[hash]
	a.mu.Unlock()
	if !ok || now.After(e.expires) {
		rec, err := a.store.Lookup(ctx, hash)
		switch {
		case err == nil:
			e = cacheEntry{rec: rec, known: true, expires: now.Add(a.ttl)}
		case errors.Is(err, ErrUnknownKey):
			e = cacheEntry{expires: now.Add(a.negativeTTL)}
		case ctx.Err() != nil:
			return Principal{}, ctx.Err()
		default:
			return Principal{}, problem.Unavailable("credential store unavailable", err)
		}
		a.put(hash, e, now)
	}
	if !e.known {
		return Principal{}, problem.Unauthenticated("invalid API key")
	}
	return Principal{Tenant: e.rec.Tenant, KeyHash: hash, ClientID: e.rec.ClientID}, nil
}

func (a *Authenticator) authenticateToken(ctx context.Context, tok string) (Principal, error) {
	c, err := a.tokens.Parse(tok)
	if err != nil {
		return Principal{}, err
	}
	// The client's existence is cached like a key record, so revoking the
	// API key ends its tokens within the TTL.
	ck := "client:" + c.ClientID
	now := a.now()
	a.mu.Lock()
	e, ok := a.cache[ck]
	a.mu.Unlock()
	if !ok || now.After(e.expires) {
		exists, err := a.clients.ClientExists(ctx, c.ClientID)
		switch {
		case err == nil && exists:
			e = cacheEntry{rec: Record{Tenant: c.Tenant, ClientID: c.ClientID}, known: true, expires: now.Add(a.ttl)}
		case err == nil:
			e = cacheEntry{expires: now.Add(a.negativeTTL)}
		case ctx.Err() != nil:
			return Principal{}, ctx.Err()
		default:
			return Principal{}, problem.Unavailable("credential store unavailable", err)
		}
		a.put(ck, e, now)
	}
	if !e.known {
		return Principal{}, problem.Unauthenticated("token revoked")
	}
	return Principal{Tenant: c.Tenant, ClientID: c.ClientID, KeyHash: HashKey(tok)}, nil
}

func (a *Authenticator) put(hash string, e cacheEntry, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cache) >= maxCacheEntries {
		for h, old := range a.cache {
			if now.After(old.expires) {
				delete(a.cache, h)
			}
		}
		if len(a.cache) >= maxCacheEntries {
			// Still full of live entries: start over rather than grow.
			clear(a.cache)
		}
	}
	a.cache[hash] = e
}

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the caller's principal, if the call was authenticated.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok && p.Tenant != ""
}

// TenantFrom returns the caller's tenant or an Unauthenticated error, so a
// handler reached without the interceptor fails closed. The administrator
// owns no jobs: it is refused too.
func TenantFrom(ctx context.Context) (string, error) {
	p, ok := PrincipalFrom(ctx)
	if !ok {
		if p, _ := ctx.Value(principalKey{}).(Principal); p.Admin {
			return "", problem.New(codes.PermissionDenied, "admin-not-tenant", "Permission denied",
				"the admin credential manages tenants; use a tenant's API key or token for jobs")
		}
		return "", problem.Unauthenticated("missing bearer credentials")
	}
	return p.Tenant, nil
}

// AnyPrincipalFrom returns the caller, tenant or admin.
func AnyPrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok && (p.Tenant != "" || p.Admin)
}

// bearer extracts the key from "authorization: Bearer <key>" metadata.
func bearer(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if key := BearerFrom(v); key != "" {
			return key
		}
	}
	return ""
}

// BearerFrom returns the credential of an "Authorization: Bearer <key>"
// header value, or "".
func BearerFrom(header string) string {
	scheme, key, ok := strings.Cut(strings.TrimSpace(header), " ")
	if ok && strings.EqualFold(scheme, "bearer") {
		return strings.TrimSpace(key)
	}
	return ""
}

// exempt lists services anyone may call: load balancers probe health, and
// reflection only describes the public API.
func exempt(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

// UnaryServerInterceptor authenticates every unary call not exempt.
func (a *Authenticator) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if exempt(info.FullMethod) {
			return handler(ctx, req)
		}
		p, err := a.Authenticate(ctx, bearer(ctx))
		if err != nil {
			return nil, err
		}
		return handler(WithPrincipal(ctx, p), req)
	}
}

// StreamServerInterceptor authenticates every streaming call not exempt.
func (a *Authenticator) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if exempt(info.FullMethod) {
			return handler(srv, ss)
		}
		p, err := a.Authenticate(ss.Context(), bearer(ss.Context()))
		if err != nil {
			return err
		}
		return handler(srv, &principalStream{ServerStream: ss, ctx: WithPrincipal(ss.Context(), p)})
	}
}

type principalStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *principalStream) Context() context.Context { return s.ctx }

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
