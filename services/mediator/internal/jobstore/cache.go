package jobstore

import "github.com/medius-platform/medius/pkg/revcache"

// Bounds of the record cache. A job is cached from its creation until it
// ends, which on a busy platform is a few seconds; tens of thousands of
// records cover several seconds at thousands of jobs per second.
const (
	cacheEntries = 32 << 10
	cacheBytes   = 32 << 20
	// A record this large (a big input) is not worth the room it takes.
	cacheMaxRecord = 64 << 10
)

// newRecordCache remembers the encoded records (never modified: handed out
// to be decoded, not to be changed) this process last read or wrote.
func newRecordCache(maxEntries, maxBytes int) *revcache.Cache[[]byte] {
	return revcache.New(maxEntries, revcache.MaxBytes(maxBytes, func(data []byte) int { return len(data) }))
}
