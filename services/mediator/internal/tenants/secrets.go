package tenants

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/medius-platform/medius/pkg/revcache"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// SecretTTL bounds how long WebhookSecrets serves a secret it read, even
// when no change arrives: the watch keeps entries current, but a watch whose
// connection hangs without breaking (no keepalive on the etcd client)
// reports nothing, and this backstop bounds what that can cost.
const SecretTTL = time.Minute

// DefaultMaxSecrets bounds the secrets WebhookSecrets holds when no bound is
// given.
const DefaultMaxSecrets = 4096

// WebhookSecrets serves tenants' webhook secrets for signing notifications,
// which would otherwise cost an etcd read per job status change. A secret is
// read once and then kept current by a watch on the tenants' prefix (Run),
// so a rotation or a deletion stored by anyone applies to every
// notification signed after its watch event arrives here, and in any case
// to those signed more than SecretTTL after it was stored.
//
// While no watch is established (Run not started, or reconnecting after a
// failure) nothing is cached: every lookup reads etcd. Entries are keyed by
// the exact tenant id, so a lookup never answers with another tenant's
// secret.
type WebhookSecrets struct {
	cli  *clientv3.Client
	max  int
	now  func() time.Time
	wait time.Duration // first retry delay of a failed watch

	// reads counts etcd reads; afterRead runs between a read and its
	// caching (tests).
	reads     atomic.Int64
	afterRead func()

	mu    sync.Mutex
	cache *revcache.Cache[secretEntry]
	// live says a watch is established: changes after its start revision
	// reach the cache.
	live bool
	// epoch changes whenever the watch starts or stops, so a read begun
	// under another watch (or none) is not cached.
	epoch uint64
	// lastRev is the revision of the newest change applied (or the watch's
	// start): a read older than it may have missed a change to an entry
	// that was not cached when the change arrived, so it is not cached.
	lastRev int64
}

// secretEntry is a tenant's secret as of some revision, or its absence.
type secretEntry struct {
	secret  string
	found   bool
	expires time.Time
}

// NewWebhookSecrets reads from cli and holds at most maxTenants secrets
// (DefaultMaxSecrets if not positive), dropping the least recently used.
// Run keeps them current; without it every lookup reads etcd.
func NewWebhookSecrets(cli *clientv3.Client, maxTenants int) *WebhookSecrets {
	if maxTenants <= 0 {
		maxTenants = DefaultMaxSecrets
	}
	return &WebhookSecrets{
		cli: cli, max: maxTenants, now: time.Now, wait: 100 * time.Millisecond,
		cache: revcache.New[secretEntry](maxTenants),
	}
}

// Secret returns the tenant's webhook secret (a webhook.Secrets); a tenant
// without a record is ErrTenantNotFound.
func (w *WebhookSecrets) Secret(ctx context.Context, tenant string) (string, error) {
	if !ValidTenantID(tenant) {
		return "", fmt.Errorf("tenant %s: %w", tenant, ErrTenantNotFound)
	}
	now := w.now()
	w.mu.Lock()
	live, epoch := w.live, w.epoch
	if live {
		if e, _, ok := w.cache.Get(tenant); ok && now.Before(e.expires) {
			w.mu.Unlock()
			return e.result(tenant)
		}
	}
	w.mu.Unlock()

	w.reads.Add(1)
	resp, err := w.cli.Get(ctx, TenantPrefix+tenant)
	if err != nil {
		return "", fmt.Errorf("get webhook secret of %s: %w", tenant, err)
	}
	// Expiry counts from before the read: never serve longer than SecretTTL.
	e := secretEntry{expires: now.Add(SecretTTL)}
	if len(resp.Kvs) > 0 {
		var t Tenant
		if err := json.Unmarshal(resp.Kvs[0].Value, &t); err != nil {
			return "", fmt.Errorf("decode tenant %s: %w", tenant, err)
		}
		e.secret, e.found = t.WebhookSecret, true
	}
	if w.afterRead != nil {
		w.afterRead()
	}
	if live {
		rev := resp.Header.Revision
		w.mu.Lock()
		// Reads are linearizable: begun under the live watch, this one saw
		// at least its start revision, so every later change reaches the
		// entry, and revcache keeps a change newer than the read.
		if w.live && w.epoch == epoch && rev >= w.lastRev {
			w.cache.Put(tenant, e, uint64(rev))
		}
		w.mu.Unlock()
	}
	return e.result(tenant)
}

func (e secretEntry) result(tenant string) (string, error) {
	if !e.found {
		return "", fmt.Errorf("tenant %s: %w", tenant, ErrTenantNotFound)
	}
	return e.secret, nil
}

// Run follows the tenants' changes until ctx ends, re-establishing the
// watch with backoff when it fails (meanwhile lookups read etcd).
func (w *WebhookSecrets) Run(ctx context.Context) error {
	wait := w.wait
	for {
		progressed, err := w.follow(ctx)
		w.stop()
		if ctx.Err() != nil {
			return nil
		}
		if progressed {
			wait = w.wait
		}
		slog.WarnContext(ctx, "tenant watch interrupted; webhook secrets read from etcd until it resumes", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// follow runs one watch; progressed tells whether it was established.
func (w *WebhookSecrets) follow(ctx context.Context) (progressed bool, err error) {
	// Without a leader the member serves no new changes: end the watch
	// (and the cache with it) rather than wait on it.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := w.cli.Watch(wctx, TenantPrefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return progressed, fmt.Errorf("watch tenants: %w", err)
		}
		switch {
		case resp.Created:
			progressed = true
			w.start(resp.Header.Revision)
		case resp.IsProgressNotify():
		default:
			w.apply(resp.Events)
		}
	}
	if err := ctx.Err(); err != nil {
		return progressed, err
	}
	return progressed, errors.New("watch tenants: channel closed")
}

// start makes the cache live from rev: the watch delivers every change
// after it.
func (w *WebhookSecrets) start(rev int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.live, w.lastRev = true, rev
	w.epoch++
}

// stop empties the cache: changes from now until the next watch starts
// would be missed.
func (w *WebhookSecrets) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.live = false
	w.epoch++
	w.cache = revcache.New[secretEntry](w.max)
}

// apply updates the cached tenants the events change. Tenants not cached
// are left out: they are read when asked for.
func (w *WebhookSecrets) apply(events []*clientv3.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ev := range events {
		rev := ev.Kv.ModRevision
		w.lastRev = max(w.lastRev, rev)
		id := strings.TrimPrefix(string(ev.Kv.Key), TenantPrefix)
		old, _, ok := w.cache.Get(id)
		if !ok {
			continue
		}
		// The entry keeps its expiry: it still reflects no read newer than
		// the one that made it, which is what SecretTTL bounds.
		e := secretEntry{expires: old.expires}
		if ev.Type == clientv3.EventTypePut {
			var t Tenant
			if err := json.Unmarshal(ev.Kv.Value, &t); err != nil {
				// The next lookup reads it and reports the error.
				w.cache.Drop(id)
				continue
			}
			e.secret, e.found = t.WebhookSecret, true
		}
		w.cache.Put(id, e, uint64(rev))
	}
}

// synced reports whether the watch is established (tests).
func (w *WebhookSecrets) synced() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.live
}
