// Package tenants keeps Medius tenants (projects), their quota settings and
// their API keys in etcd. An API key is a client id plus a secret: the secret
// is shown once, when the key is made, and only its sha256 is stored, both
// under the client record (for the client id + secret token exchange) and
// under /medius/apikeys/<sha256> (so the secret also works directly as a
// bearer key, see package auth).
//
// etcd keys:
//
//	/medius/tenants/<id>     Tenant (JSON): quota, webhook secret, locator roots
//	/medius/clients/<id>     Client (JSON)
//	/medius/apikeys/<hex>    auth.Record (JSON)
package tenants

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd prefixes.
const (
	TenantPrefix = "/medius/tenants/"
	ClientPrefix = "/medius/clients/"
	// RetiredPrefix marks the ids of deleted tenants: their jobs, usage
	// and counters are keyed by the id and stay, so a new tenant under
	// it would see them.
	RetiredPrefix = "/medius/tenants-retired/"
)

// Periods a per-period quota can count over.
const (
	PeriodDay   = "day"
	PeriodMonth = "month"
)

// Quota limits a tenant. Zero means unlimited.
type Quota struct {
	// MaxConcurrentJobs bounds the tenant's non-terminal jobs.
	MaxConcurrentJobs int64 `json:"maxConcurrentJobs,omitempty"`
	// MaxJobsPerPeriod bounds the jobs admitted per Period.
	MaxJobsPerPeriod int64 `json:"maxJobsPerPeriod,omitempty"`
	// MaxQuantityPerPeriod bounds the verified quantity (seconds of media)
	// used per Period; a job is refused once it is reached.
	MaxQuantityPerPeriod float64 `json:"maxQuantityPerPeriod,omitempty"`
	// Period is "day" or "month" (UTC); empty means month.
	Period string `json:"period,omitempty"`
}

// Validate names the field at fault.
func (q Quota) Validate() error {
	switch {
	case q.MaxConcurrentJobs < 0:
		return problem.InvalidArgument("quota.maxConcurrentJobs", "must not be negative")
	case q.MaxJobsPerPeriod < 0:
		return problem.InvalidArgument("quota.maxJobsPerPeriod", "must not be negative")
	case q.MaxQuantityPerPeriod < 0:
		return problem.InvalidArgument("quota.maxQuantityPerPeriod", "must not be negative")
	case q.Period != "" && q.Period != PeriodDay && q.Period != PeriodMonth:
		return problem.InvalidArgument("quota.period", "period must be %q or %q", PeriodDay, PeriodMonth)
	}
	return nil
}

// PeriodStart is the start of the quota period holding t (UTC).
func (q Quota) PeriodStart(t time.Time) time.Time {
	t = t.UTC()
	if q.Period == PeriodDay {
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	}
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// Tenant is a project owning jobs.
type Tenant struct {
	ID          string `json:"id"`
	DisplayName string `json:"displayName,omitempty"`
	Quota       Quota  `json:"quota"`
	// WebhookSecret signs the tenant's notifications. It is kept in clear
	// because the mediator needs it to sign; it is shown to admins only.
	WebhookSecret string `json:"webhookSecret,omitempty"`
	// LocatorRoots are the URL prefixes the tenant's file:// and s3://
	// locators must fall under (see NormalizeLocatorRoots); none: the
	// tenant may name no such locator. Always a list, empty when none.
	LocatorRoots []string  `json:"locatorRoots"`
	CreateTime   time.Time `json:"createTime"`
}

// Client is an API key without its secret.
type Client struct {
	ID         string    `json:"clientId"`
	Tenant     string    `json:"tenant"`
	Name       string    `json:"name,omitempty"`
	SecretHash string    `json:"secretHash,omitempty"`
	CreateTime time.Time `json:"createTime"`
}

// Errors.
var (
	ErrTenantNotFound = errors.New("tenant not found")
	ErrTenantExists   = errors.New("tenant already exists")
	ErrTenantRetired  = errors.New("tenant id retired: a deleted tenant's jobs and usage are kept under it")
	ErrClientNotFound = errors.New("api key not found")
)

var tenantIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ValidTenantID reports whether id can name a tenant: lowercase letters,
// digits and dashes, so it is safe in etcd keys, NATS KV keys and URLs.
func ValidTenantID(id string) bool { return tenantIDRe.MatchString(id) }

// Store keeps tenants and keys in etcd.
type Store struct {
	cli *clientv3.Client
	now func() time.Time

	mu      sync.Mutex
	records map[string]cachedRecord
	// gen counts changes made through this Store, so that a read begun
	// before one is not cached after it.
	gen uint64
}

// QuotaTTL is how long Quota and LocatorRoots serve a tenant's quota and
// roots as read: a change made through another Store (another mediator
// replica) applies to admissions within it; one made through the same
// Store, at once.
const QuotaTTL = 2 * time.Second

// maxCachedRecords bounds the cache; it is cleared when full.
const maxCachedRecords = 4096

// cachedRecord is what job creation reads of a tenant on every submit.
type cachedRecord struct {
	q       Quota
	roots   Roots
	found   bool
	expires time.Time
}

// New uses cli.
func New(cli *clientv3.Client) *Store { return &Store{cli: cli, now: time.Now} }

func randomToken(prefix string, n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random: %w", err)
	}
	return prefix + hex.EncodeToString(b), nil
}

func newWebhookSecret() (string, error) { return randomToken("whsec_", 24) }

// CreateTenant stores t; ErrTenantExists if the id is taken. It fills
// CreateTime and a webhook secret when none is given.
func (s *Store) CreateTenant(ctx context.Context, t Tenant) (Tenant, error) {
	return s.createTenant(ctx, t, false)
}

// createTenant creates t; reuse lets it take the id of a deleted tenant
// (the bootstrap tenant, which the configuration names).
func (s *Store) createTenant(ctx context.Context, t Tenant, reuse bool) (Tenant, error) {
	if !ValidTenantID(t.ID) {
		return Tenant{}, problem.InvalidArgument("id", "tenant id must be 1-63 lowercase letters, digits or dashes")
	}
	if err := t.Quota.Validate(); err != nil {
		return Tenant{}, err
	}
	roots, err := NormalizeLocatorRoots(t.LocatorRoots)
	if err != nil {
		return Tenant{}, err
	}
	t.LocatorRoots = roots
	if t.WebhookSecret == "" {
		sec, err := newWebhookSecret()
		if err != nil {
			return Tenant{}, err
		}
		t.WebhookSecret = sec
	}
	t.CreateTime = s.now().UTC()
	data, err := json.Marshal(t)
	if err != nil {
		return Tenant{}, fmt.Errorf("encode tenant %s: %w", t.ID, err)
	}
	key, retired := TenantPrefix+t.ID, RetiredPrefix+t.ID
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}
	ops := []clientv3.Op{clientv3.OpPut(key, string(data))}
	if reuse {
		ops = append(ops, clientv3.OpDelete(retired))
	} else {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(retired), "=", 0))
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(key, clientv3.WithCountOnly())).Commit()
	if err != nil {
		return Tenant{}, fmt.Errorf("create tenant %s: %w", t.ID, err)
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().GetCount() == 0 {
			return Tenant{}, fmt.Errorf("create tenant %s: %w", t.ID, ErrTenantRetired)
		}
		return Tenant{}, fmt.Errorf("create tenant %s: %w", t.ID, ErrTenantExists)
	}
	s.forget(t.ID) // Quota may have cached its absence
	return t, nil
}

// EnsureTenant creates the tenant id if it does not exist (bootstrap),
// deleted or not: the configuration names it, and its key with it.
func (s *Store) EnsureTenant(ctx context.Context, id string) error {
	_, err := s.createTenant(ctx, Tenant{ID: id}, true)
	if errors.Is(err, ErrTenantExists) {
		return nil
	}
	return err
}

// Tenant returns the tenant id.
func (s *Store) Tenant(ctx context.Context, id string) (Tenant, error) {
	if !ValidTenantID(id) {
		return Tenant{}, ErrTenantNotFound
	}
	resp, err := s.cli.Get(ctx, TenantPrefix+id)
	if err != nil {
		return Tenant{}, fmt.Errorf("get tenant %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return Tenant{}, fmt.Errorf("tenant %s: %w", id, ErrTenantNotFound)
	}
	t, err := decodeTenant(resp.Kvs[0].Value)
	if err != nil {
		return Tenant{}, fmt.Errorf("decode tenant %s: %w", id, err)
	}
	return t, nil
}

// decodeTenant reads a stored record; one stored before roots existed has
// none.
func decodeTenant(data []byte) (Tenant, error) {
	var t Tenant
	if err := json.Unmarshal(data, &t); err != nil {
		return Tenant{}, err
	}
	if t.LocatorRoots == nil {
		t.LocatorRoots = []string{}
	}
	return t, nil
}

// Quota returns the tenant's quota for admission, which asks for it on
// every submit: it is read from etcd at most once per QuotaTTL, so it may be
// up to QuotaTTL stale when changed through another Store. A tenant without
// a record is ErrTenantNotFound, cached the same way.
func (s *Store) Quota(ctx context.Context, id string) (Quota, error) {
	e, err := s.cached(ctx, id)
	return e.q, err
}

// LocatorRoots returns the tenant's locator roots for job creation, which
// asks for them on every submit naming a file:// or s3:// locator: read
// with the quota, from the same cache (QuotaTTL), so a job costs no etcd
// read of its own. A tenant without a record is ErrTenantNotFound.
func (s *Store) LocatorRoots(ctx context.Context, id string) (Roots, error) {
	e, err := s.cached(ctx, id)
	return e.roots, err
}

// cached returns what job creation reads of tenant id, from etcd at most
// once per QuotaTTL.
func (s *Store) cached(ctx context.Context, id string) (cachedRecord, error) {
	now := s.now()
	s.mu.Lock()
	e, ok := s.records[id]
	gen := s.gen
	s.mu.Unlock()
	if ok && now.Before(e.expires) {
		if !e.found {
			return cachedRecord{}, fmt.Errorf("tenant %s: %w", id, ErrTenantNotFound)
		}
		return e, nil
	}
	t, err := s.Tenant(ctx, id)
	if err != nil && !errors.Is(err, ErrTenantNotFound) {
		return cachedRecord{}, err
	}
	// Expiry counts from before the read: never serve longer than QuotaTTL.
	e = cachedRecord{q: t.Quota, roots: locator.ParseTenantRoots(t.LocatorRoots), found: err == nil, expires: now.Add(QuotaTTL)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen == gen {
		if s.records == nil || len(s.records) >= maxCachedRecords {
			s.records = map[string]cachedRecord{}
		}
		s.records[id] = e
	}
	return e, err
}

// forget drops the cached record of id after a change through this Store.
func (s *Store) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	delete(s.records, id)
}

// Tenants lists every tenant, by id.
func (s *Store) Tenants(ctx context.Context) ([]Tenant, error) {
	resp, err := s.cli.Get(ctx, TenantPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list tenants: %w", err)
	}
	out := make([]Tenant, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if t, err := decodeTenant(kv.Value); err == nil {
			out = append(out, t)
		}
	}
	return out, nil
}

// SetQuota replaces the tenant's quota.
func (s *Store) SetQuota(ctx context.Context, id string, q Quota) (Tenant, error) {
	if err := q.Validate(); err != nil {
		return Tenant{}, err
	}
	return s.update(ctx, id, "set quota of", func(t *Tenant) { t.Quota = q })
}

// SetLocatorRoots replaces the tenant's locator roots (none: the tenant
// may name no file:// or s3:// locator), normalised. Job creation through
// this Store applies them at once, through another within QuotaTTL.
func (s *Store) SetLocatorRoots(ctx context.Context, id string, roots []string) (Tenant, error) {
	norm, err := NormalizeLocatorRoots(roots)
	if err != nil {
		return Tenant{}, err
	}
	return s.update(ctx, id, "set locator roots of", func(t *Tenant) { t.LocatorRoots = norm })
}

// RotateWebhookSecret gives the tenant a new random webhook secret and
// returns the tenant with it; the rest of the record is kept. The old secret
// stops signing at once (no period where both sign): every mediator's
// WebhookSecrets follows the change through its watch, so receivers must
// switch to the new secret when it is rotated.
func (s *Store) RotateWebhookSecret(ctx context.Context, id string) (Tenant, error) {
	sec, err := newWebhookSecret()
	if err != nil {
		return Tenant{}, err
	}
	return s.update(ctx, id, "rotate webhook secret of", func(t *Tenant) { t.WebhookSecret = sec })
}

// update applies change to the tenant's record with a compare-and-set on
// its mod revision, reading it again when a concurrent write got there
// first, so no other field's change is lost. what names the operation in
// errors.
func (s *Store) update(ctx context.Context, id, what string, change func(*Tenant)) (Tenant, error) {
	if !ValidTenantID(id) {
		return Tenant{}, fmt.Errorf("tenant %s: %w", id, ErrTenantNotFound)
	}
	key := TenantPrefix + id
	for {
		resp, err := s.cli.Get(ctx, key)
		if err != nil {
			return Tenant{}, fmt.Errorf("get tenant %s: %w", id, err)
		}
		if len(resp.Kvs) == 0 {
			return Tenant{}, fmt.Errorf("tenant %s: %w", id, ErrTenantNotFound)
		}
		t, err := decodeTenant(resp.Kvs[0].Value)
		if err != nil {
			return Tenant{}, fmt.Errorf("decode tenant %s: %w", id, err)
		}
		change(&t)
		data, err := json.Marshal(t)
		if err != nil {
			return Tenant{}, fmt.Errorf("encode tenant %s: %w", id, err)
		}
		tx, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(key, string(data))).Commit()
		if err != nil {
			return Tenant{}, fmt.Errorf("%s %s: %w", what, id, err)
		}
		if tx.Succeeded {
			s.forget(id)
			return t, nil
		}
	}
}

// DeleteTenant removes the tenant and revokes all its keys. Its jobs stay
// until retention removes them.
func (s *Store) DeleteTenant(ctx context.Context, id string) error {
	if _, err := s.Tenant(ctx, id); err != nil {
		return err
	}
	clients, err := s.Clients(ctx, id)
	if err != nil {
		return err
	}
	for _, c := range clients {
		if err := s.RevokeClient(ctx, id, c.ID); err != nil && !errors.Is(err, ErrClientNotFound) {
			return err
		}
	}
	// Its id is retired with it: a new tenant under it would see its jobs.
	if _, err := s.cli.Txn(ctx).Then(clientv3.OpDelete(TenantPrefix+id), clientv3.OpPut(RetiredPrefix+id, s.now().UTC().Format(time.RFC3339))).Commit(); err != nil {
		return fmt.Errorf("delete tenant %s: %w", id, err)
	}
	s.forget(id)
	// Keys registered without a client record (the bootstrap API key).
	resp, err := s.cli.Get(ctx, auth.KeyPrefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list api keys: %w", err)
	}
	for _, kv := range resp.Kvs {
		var rec auth.Record
		if json.Unmarshal(kv.Value, &rec) == nil && rec.Tenant == id {
			if _, err := s.cli.Delete(ctx, string(kv.Key)); err != nil {
				return fmt.Errorf("revoke api key of %s: %w", id, err)
			}
		}
	}
	return nil
}

// NewKey makes an API key for tenant and returns its client record and the
// secret, which is never stored nor shown again.
func (s *Store) NewKey(ctx context.Context, tenant, name string) (Client, string, error) {
	clientID, err := randomToken("mc_", 12)
	if err != nil {
		return Client{}, "", err
	}
	secret, err := randomToken("mk_", 24)
	if err != nil {
		return Client{}, "", err
	}
	c, err := s.PutKey(ctx, tenant, clientID, secret, name)
	return c, secret, err
}

// PutKey registers clientID with secret for tenant (the bootstrap uses it
// with configured values; NewKey with random ones). The tenant must exist.
func (s *Store) PutKey(ctx context.Context, tenant, clientID, secret, name string) (Client, error) {
	if len(clientID) == 0 || len(clientID) > 128 || !printableASCII(clientID) {
		return Client{}, problem.InvalidArgument("clientId", "client id must be 1-128 printable characters")
	}
	if len(secret) < 16 {
		return Client{}, problem.InvalidArgument("secret", "secret must be at least 16 characters")
	}
	if len(name) > 128 {
		return Client{}, problem.InvalidArgument("name", "name longer than 128 bytes")
	}
	c := Client{ID: clientID, Tenant: tenant, Name: name, SecretHash: auth.HashKey(secret), CreateTime: s.now().UTC()}
	data, _ := json.Marshal(c)
	rec, _ := json.Marshal(auth.Record{Tenant: tenant, ClientID: clientID})
	ck := ClientPrefix + clientID
	tx, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(TenantPrefix+tenant), ">", 0)).
		Then(clientv3.OpPut(ck, string(data)), clientv3.OpPut(auth.KeyPrefix+c.SecretHash, string(rec))).Commit()
	if err != nil {
		return Client{}, fmt.Errorf("create api key for %s: %w", tenant, err)
	}
	if !tx.Succeeded {
		return Client{}, fmt.Errorf("create api key: tenant %s: %w", tenant, ErrTenantNotFound)
	}
	return c, nil
}

func printableASCII(s string) bool {
	for i := range len(s) {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// Client returns the client record of id.
func (s *Store) Client(ctx context.Context, id string) (Client, error) {
	resp, err := s.cli.Get(ctx, ClientPrefix+id)
	if err != nil {
		return Client{}, fmt.Errorf("get api key %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return Client{}, fmt.Errorf("api key %s: %w", id, ErrClientNotFound)
	}
	var c Client
	if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil {
		return Client{}, fmt.Errorf("decode api key %s: %w", id, err)
	}
	return c, nil
}

// Clients lists the tenant's keys (without secrets), oldest first.
func (s *Store) Clients(ctx context.Context, tenant string) ([]Client, error) {
	resp, err := s.cli.Get(ctx, ClientPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	var out []Client
	for _, kv := range resp.Kvs {
		var c Client
		if json.Unmarshal(kv.Value, &c) == nil && c.Tenant == tenant {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b Client) int { return a.CreateTime.Compare(b.CreateTime) })
	return out, nil
}

// RevokeClient deletes the tenant's key: the secret stops working as a
// bearer key, and tokens issued for it are refused (auth checks the client
// still exists).
func (s *Store) RevokeClient(ctx context.Context, tenant, id string) error {
	c, err := s.Client(ctx, id)
	if err != nil {
		return err
	}
	if c.Tenant != tenant {
		return fmt.Errorf("api key %s: %w", id, ErrClientNotFound)
	}
	if _, err := s.cli.Txn(ctx).Then(clientv3.OpDelete(ClientPrefix+id), clientv3.OpDelete(auth.KeyPrefix+c.SecretHash)).Commit(); err != nil {
		return fmt.Errorf("revoke api key %s: %w", id, err)
	}
	return nil
}

// VerifySecret returns the client when secret is its secret. Any mismatch
// is ErrClientNotFound, so callers cannot tell a bad id from a bad secret.
func (s *Store) VerifySecret(ctx context.Context, clientID, secret string) (Client, error) {
	if clientID == "" || len(clientID) > 128 {
		return Client{}, ErrClientNotFound
	}
	c, err := s.Client(ctx, clientID)
	if err != nil {
		return Client{}, err
	}
	if subtle.ConstantTimeCompare([]byte(c.SecretHash), []byte(auth.HashKey(secret))) != 1 {
		return Client{}, ErrClientNotFound
	}
	return c, nil
}

// ClientExists implements auth.ClientChecker.
func (s *Store) ClientExists(ctx context.Context, id string) (bool, error) {
	_, err := s.Client(ctx, id)
	if errors.Is(err, ErrClientNotFound) {
		return false, nil
	}
	return err == nil, err
}
