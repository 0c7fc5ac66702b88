// Package revcache remembers the last version a process read or wrote of
// records that other processes write too (JetStream KV entries), each with
// its revision: enough to try a compare-and-set on that revision without
// reading the record first. What it holds may be stale; only the
// compare-and-set can tell, so callers must never act on a cached record
// except through one.
//
// It is bounded by entries and, optionally, by bytes, dropping the least
// recently used first, and an older revision never replaces a newer one: of
// a read and a write racing to put, the read may carry the older state.
package revcache

import (
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Cache maps keys to a value and its revision. It is safe for concurrent use.
type Cache[V any] struct {
	mu       sync.Mutex
	lru      *simplelru.LRU[string, entry[V]]
	size     func(V) int
	bytes    int
	maxBytes int
}

type entry[V any] struct {
	val V
	rev uint64
}

// Option sets a bound of a Cache.
type Option[V any] func(*Cache[V])

// MaxBytes bounds the sum of size(value) over the values held.
func MaxBytes[V any](n int, size func(V) int) Option[V] {
	return func(c *Cache[V]) { c.maxBytes, c.size = n, size }
}

// New returns a cache of at most maxEntries values (at least one).
func New[V any](maxEntries int, opts ...Option[V]) *Cache[V] {
	c := &Cache[V]{}
	for _, o := range opts {
		o(c)
	}
	// NewLRU fails only on a size below 1.
	c.lru, _ = simplelru.NewLRU(max(maxEntries, 1), func(_ string, e entry[V]) { c.bytes -= c.sizeOf(e.val) })
	return c
}

func (c *Cache[V]) sizeOf(v V) int {
	if c.size == nil {
		return 0
	}
	return c.size(v)
}

// Get returns the value of key and its revision, if remembered.
func (c *Cache[V]) Get(key string) (v V, rev uint64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Get(key)
	return e.val, e.rev, ok
}

// Put remembers v as revision rev of key, unless a later revision of key is
// remembered already.
func (c *Cache[V]) Put(key string, v V, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.lru.Peek(key); ok {
		if old.rev > rev {
			return
		}
		c.bytes -= c.sizeOf(old.val)
	}
	c.bytes += c.sizeOf(v)
	c.lru.Add(key, entry[V]{val: v, rev: rev})
	for c.maxBytes > 0 && c.bytes > c.maxBytes && c.lru.Len() > 0 {
		c.lru.RemoveOldest()
	}
}

// Drop forgets key: after a write whose outcome is unknown, or a revision
// found to be stale.
func (c *Cache[V]) Drop(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Remove(key)
}

// Len is the number of values held.
func (c *Cache[V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
