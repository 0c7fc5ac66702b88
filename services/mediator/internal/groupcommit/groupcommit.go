// Package groupcommit batches concurrent writes into one commit: the first
// caller of a key leads, committing everything queued for that key
// meanwhile in batches until none is left, while the others wait for their
// batch's answer. Under load, N concurrent writes cost one round trip (and
// one etcd fsync) between them; alone, a write costs what it did before.
package groupcommit

import (
	"context"
	"sync"
	"time"
)

// CommitFunc commits one batch of key's items and returns one error per
// item (nil: done).
type CommitFunc[K comparable, T any] func(ctx context.Context, key K, batch []T) []error

// Group queues items per key and commits them in batches.
type Group[K comparable, T any] struct {
	commit   CommitFunc[K, T]
	maxBatch int
	timeout  time.Duration

	mu      sync.Mutex
	queued  map[K][]*call[T]
	leading map[K]bool
}

type call[T any] struct {
	item T
	// ctx is the caller's: an item whose caller has given up by the time
	// its batch is taken is left out of it.
	ctx  context.Context
	done chan error
	// lead is closed when the call is to commit the next batch.
	lead chan struct{}
}

// New commits with commit, at most maxBatch items at a time; a batch's
// commit gets timeout, whatever happens to the call that leads it.
func New[K comparable, T any](maxBatch int, timeout time.Duration, commit CommitFunc[K, T]) *Group[K, T] {
	return &Group[K, T]{commit: commit, maxBatch: max(maxBatch, 1), timeout: timeout,
		queued: map[K][]*call[T]{}, leading: map[K]bool{}}
}

// Do commits item under key and returns its outcome. When ctx has ended
// before the item's batch is taken, ctx's error is returned and the item
// is never committed. Once its batch is being committed, the batch's
// outcome for it is returned, whatever ctx does (the batch's timeout bounds
// the wait).
//
// The call that finds no commit under way leads: it commits a batch (its
// own item first) and hands the lead to the oldest call still queued, so
// under steady load each call leads at most one batch and no caller waits
// for others' batches beyond its own.
func (g *Group[K, T]) Do(ctx context.Context, key K, item T) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := &call[T]{item: item, ctx: ctx, done: make(chan error, 1), lead: make(chan struct{})}
	g.mu.Lock()
	g.queued[key] = append(g.queued[key], c)
	if !g.leading[key] {
		g.leading[key] = true
		close(c.lead)
	}
	g.mu.Unlock()
	for {
		select {
		case err := <-c.done:
			return err
		case <-c.lead:
			c.lead = nil // lead once
			g.commitBatch(ctx, key)
		case <-ctx.Done():
			g.mu.Lock()
			promoted := c.lead != nil && closed(c.lead)
			withdrawn := !promoted && g.withdraw(key, c)
			g.mu.Unlock()
			if withdrawn {
				return ctx.Err() // never committed
			}
			if promoted {
				// Handed the lead as it gave up: the others still need it.
				// Its own item, taken with them, is left out and answered
				// with ctx's error.
				g.commitBatch(ctx, key)
			}
			// Its batch is being committed: what happened to the item is
			// the answer, within the batch's timeout.
			return <-c.done
		}
	}
}

func closed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// withdraw takes c out of key's queue if it is still there (not yet in a
// batch), reporting whether it was. g.mu is held.
func (g *Group[K, T]) withdraw(key K, c *call[T]) bool {
	q := g.queued[key]
	for i, x := range q {
		if x == c {
			g.queued[key] = append(q[:i:i], q[i+1:]...)
			return true
		}
	}
	return false
}

// commitBatch commits the oldest batch of key's queue, then hands the lead
// to the oldest call left, or gives it up when none is.
func (g *Group[K, T]) commitBatch(ctx context.Context, key K) {
	g.mu.Lock()
	queue := g.queued[key]
	n := min(len(queue), g.maxBatch)
	taken := queue[:n:n]
	g.queued[key] = queue[n:]
	g.mu.Unlock()

	// Callers that gave up before their batch was taken are answered so,
	// their items never committed, the leader's own included.
	batch := taken[:0:0]
	for _, c := range taken {
		if err := c.ctx.Err(); err != nil {
			c.done <- err
			continue
		}
		batch = append(batch, c)
	}
	if n = len(batch); n > 0 {
		// The leader's own cancellation must not fail the others' items.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.timeout)
		items := make([]T, n)
		for i, c := range batch {
			items[i] = c.item
		}
		errs := g.commit(cctx, key, items)
		cancel()
		for i, c := range batch {
			c.done <- errs[i]
		}
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	if next := g.queued[key]; len(next) > 0 {
		close(next[0].lead)
		return
	}
	delete(g.queued, key)
	delete(g.leading, key)
}
