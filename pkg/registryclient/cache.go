package registryclient

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"google.golang.org/grpc"
)

// WatchClient is the part of the registry API a Cache uses;
// registryv1.NewRegistryServiceClient(cc) satisfies it.
type WatchClient interface {
	Watch(ctx context.Context, in *registryv1.WatchRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[registryv1.WatchResponse], error)
}

var _ WatchClient = registryv1.NewRegistryServiceClient(nil)

// ErrNotSynced is returned by lookups made before the cache first received
// the registry's state.
var ErrNotSynced = errors.New("registry cache not synced yet")

// Cache is a local copy of the registry (services, job profiles, live
// instances) kept current by the registry's Watch stream, so a caller that
// selects a service per job asks memory, not the registry. After a broken
// stream it resumes from the last revision it applied; when the registry
// answers with a snapshot (that revision was compacted away) it swaps its
// whole state at once, so it never serves a half-applied snapshot and never
// misses a change.
//
// Values handed out are shared with the cache: callers must not modify them.
type Cache struct {
	client WatchClient
	log    *slog.Logger

	mu        sync.RWMutex
	st        *cacheState
	rev       int64
	staging   *cacheState // a snapshot being received, swapped in when complete
	synced    chan struct{}
	syncOnce  sync.Once
	connected atomic.Bool
	resyncs   atomic.Int64
}

// cacheState is one consistent view of the registry.
type cacheState struct {
	services  map[string]*registryv1.Service
	profiles  map[string]*registryv1.JobProfile
	instances map[string]*registryv1.ServiceInstance
	// members and byProfile index instances by the profiles they offer;
	// byProfile holds immutable slices (sorted by id), rebuilt for the
	// profiles a change touches, so a lookup is a map read.
	members   map[string]map[string]*registryv1.ServiceInstance
	byProfile map[string][]*registryv1.ServiceInstance
}

func newCacheState() *cacheState {
	return &cacheState{
		services:  map[string]*registryv1.Service{},
		profiles:  map[string]*registryv1.JobProfile{},
		instances: map[string]*registryv1.ServiceInstance{},
		members:   map[string]map[string]*registryv1.ServiceInstance{},
		byProfile: map[string][]*registryv1.ServiceInstance{},
	}
}

// CacheOption configures a Cache.
type CacheOption func(*Cache)

// WithCacheLogger sets the logger (default slog.Default()).
func WithCacheLogger(l *slog.Logger) CacheOption { return func(c *Cache) { c.log = l } }

// NewCache returns a cache fed by client; Run keeps it current.
func NewCache(client WatchClient, opts ...CacheOption) *Cache {
	c := &Cache{client: client, log: slog.Default(), st: newCacheState(), synced: make(chan struct{})}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Run follows the registry until ctx ends, reconnecting with backoff.
func (c *Cache) Run(ctx context.Context) error {
	b := newBackoff(5 * time.Second)
	for {
		progressed, err := c.follow(ctx)
		c.connected.Store(false)
		c.mu.Lock()
		c.staging = nil // an interrupted snapshot is useless; resume asks again
		c.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		if progressed {
			b = newBackoff(5 * time.Second)
		}
		wait := b.next()
		c.log.WarnContext(ctx, "registry watch interrupted, resuming", "rev", c.Revision(), "err", err, "retry_in", wait)
		if !sleep(ctx, wait) {
			return nil
		}
	}
}

// follow runs one Watch stream; progressed tells whether it delivered
// anything (then the next attempt starts without backoff).
func (c *Cache) follow(ctx context.Context) (progressed bool, err error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.client.Watch(wctx, &registryv1.WatchRequest{StartRevision: c.Revision()})
	if err != nil {
		return false, fmt.Errorf("watch registry: %w", err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return progressed, fmt.Errorf("watch registry: %w", err)
		}
		progressed = true
		c.connected.Store(true)
		c.Apply(resp)
	}
}

// Apply applies one Watch response. Run calls it; it is exported for
// callers that run the stream themselves (and for benchmarks).
func (c *Cache) Apply(resp *registryv1.WatchResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if resp.GetResync() {
		c.staging = newCacheState()
		c.resyncs.Add(1)
	}
	if c.staging != nil {
		for _, ch := range resp.GetChanges() {
			c.staging.apply(ch, nil)
		}
		if !resp.GetSynced() {
			return
		}
		c.staging.reindexAll()
		c.st, c.staging = c.staging, nil
		c.rev = resp.GetRevision()
		c.syncOnce.Do(func() { close(c.synced) })
		return
	}
	touched := map[string]bool{}
	for _, ch := range resp.GetChanges() {
		c.st.apply(ch, touched)
	}
	for p := range touched {
		c.st.reindex(p)
	}
	if r := resp.GetRevision(); r > c.rev {
		c.rev = r
	}
}

// apply applies one change; touched collects the profiles whose instance
// index must be rebuilt (nil: the caller rebuilds everything).
func (s *cacheState) apply(ch *registryv1.Change, touched map[string]bool) {
	del := ch.GetType() == registryv1.Change_TYPE_DELETE
	name := ch.GetName()
	switch ch.GetKind() {
	case registryv1.ResourceKind_RESOURCE_KIND_SERVICE:
		if del || ch.GetService() == nil {
			delete(s.services, name)
		} else {
			s.services[name] = ch.GetService()
		}
	case registryv1.ResourceKind_RESOURCE_KIND_JOB_PROFILE:
		if del || ch.GetProfile() == nil {
			delete(s.profiles, name)
		} else {
			s.profiles[name] = ch.GetProfile()
		}
	case registryv1.ResourceKind_RESOURCE_KIND_INSTANCE:
		if old, ok := s.instances[name]; ok {
			for _, p := range old.GetProfiles() {
				delete(s.members[p], name)
				if touched != nil {
					touched[p] = true
				}
			}
			delete(s.instances, name)
		}
		if del || ch.GetInstance() == nil {
			return
		}
		in := ch.GetInstance()
		s.instances[name] = in
		for _, p := range in.GetProfiles() {
			m := s.members[p]
			if m == nil {
				m = map[string]*registryv1.ServiceInstance{}
				s.members[p] = m
			}
			m[name] = in
			if touched != nil {
				touched[p] = true
			}
		}
	}
}

func (s *cacheState) reindex(profile string) {
	m := s.members[profile]
	if len(m) == 0 {
		delete(s.members, profile)
		delete(s.byProfile, profile)
		return
	}
	list := slices.Collect(maps.Values(m))
	slices.SortFunc(list, func(a, b *registryv1.ServiceInstance) int { return cmp.Compare(a.GetId(), b.GetId()) })
	s.byProfile[profile] = list
}

func (s *cacheState) reindexAll() {
	for p := range s.members {
		s.reindex(p)
	}
}

// Synced is closed once the cache holds the registry's complete state.
func (c *Cache) Synced() <-chan struct{} { return c.synced }

// WaitSynced waits until the cache is synced or ctx ends.
func (c *Cache) WaitSynced(ctx context.Context) error {
	select {
	case <-c.synced:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrNotSynced, ctx.Err())
	}
}

func (c *Cache) isSynced() bool {
	select {
	case <-c.synced:
		return true
	default:
		return false
	}
}

// Connected reports whether the watch stream is up. A disconnected cache
// still answers from what it last knew.
func (c *Cache) Connected() bool { return c.connected.Load() }

// Revision is the registry revision the cache is current with.
func (c *Cache) Revision() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.rev
}

// Resyncs counts the snapshots received (the first one included): more than
// one means the cache had to start over after a compaction.
func (c *Cache) Resyncs() int64 { return c.resyncs.Load() }

// Instances returns the live instances offering profile, sorted by id. The
// slice is shared: do not modify it.
func (c *Cache) Instances(profile string) ([]*registryv1.ServiceInstance, error) {
	if !c.isSynced() {
		return nil, ErrNotSynced
	}
	c.mu.RLock()
	list := c.st.byProfile[profile]
	c.mu.RUnlock()
	return list, nil
}

// Instance returns one live instance.
func (c *Cache) Instance(id string) (*registryv1.ServiceInstance, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	in, ok := c.st.instances[id]
	return in, ok
}

// Service returns a service definition.
func (c *Cache) Service(name string) (*registryv1.Service, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	s, ok := c.st.services[name]
	return s, ok
}

// Profile returns a job profile.
func (c *Cache) Profile(name string) (*registryv1.JobProfile, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	p, ok := c.st.profiles[name]
	return p, ok
}

// AllInstances returns every live instance, sorted by id.
func (c *Cache) AllInstances() []*registryv1.ServiceInstance {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return sortedValues(c.st.instances)
}

// Services returns every service definition, sorted by name.
func (c *Cache) Services() []*registryv1.Service {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return sortedValues(c.st.services)
}

// Profiles returns every job profile, sorted by name.
func (c *Cache) Profiles() []*registryv1.JobProfile {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return sortedValues(c.st.profiles)
}

func sortedValues[V any](m map[string]V) []V {
	keys := slices.Sorted(maps.Keys(m))
	out := make([]V, len(keys))
	for i, k := range keys {
		out[i] = m[k]
	}
	return out
}
