package jobstore

import (
	"container/list"
	"sync"
)

// Bounds of the record cache. A job is cached from its creation until it
// ends, which on a busy platform is a few seconds; tens of thousands of
// records cover several seconds at thousands of jobs per second.
const (
	cacheEntries = 32 << 10
	cacheBytes   = 32 << 20
	// A record this large (a big input) is not worth the room it takes.
	cacheMaxRecord = 64 << 10
)

// recordCache remembers the encoded record and revision of the jobs this
// process last read or wrote, least recently used dropped first. What it
// holds may be stale (other processes write the records): only a
// compare-and-set on the cached revision may rely on it.
type recordCache struct {
	maxEntries, maxBytes int

	mu    sync.Mutex
	bytes int
	lru   *list.List // of *cacheEntry, most recently used first
	byID  map[string]*list.Element
}

type cacheEntry struct {
	id   string
	data []byte // never modified: handed out to be decoded, not to be changed
	rev  uint64
}

func newRecordCache(maxEntries, maxBytes int) *recordCache {
	return &recordCache{maxEntries: maxEntries, maxBytes: maxBytes, lru: list.New(), byID: map[string]*list.Element{}}
}

func (c *recordCache) get(id string) ([]byte, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byID[id]
	if !ok {
		return nil, 0, false
	}
	c.lru.MoveToFront(el)
	e := el.Value.(*cacheEntry)
	return e.data, e.rev, true
}

// put remembers data as revision rev of id, unless a later revision is
// remembered already: of a read and a write racing to put, the older must not
// win (revisions only grow).
func (c *recordCache) put(id string, data []byte, rev uint64) {
	if len(data) > cacheMaxRecord {
		c.drop(id)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byID[id]; ok {
		e := el.Value.(*cacheEntry)
		if e.rev > rev {
			return
		}
		c.bytes += len(data) - len(e.data)
		e.data, e.rev = data, rev
		c.lru.MoveToFront(el)
	} else {
		c.byID[id] = c.lru.PushFront(&cacheEntry{id: id, data: data, rev: rev})
		c.bytes += len(data)
	}
	for c.lru.Len() > c.maxEntries || c.bytes > c.maxBytes {
		c.remove(c.lru.Back())
	}
}

func (c *recordCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byID[id]; ok {
		c.remove(el)
	}
}

func (c *recordCache) remove(el *list.Element) {
	e := c.lru.Remove(el).(*cacheEntry)
	delete(c.byID, e.id)
	c.bytes -= len(e.data)
}

func (c *recordCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
