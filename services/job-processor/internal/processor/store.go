package processor

import (
	"context"
	"errors"
	"fmt"
	"sync"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/pkg/revcache"
	"github.com/medius-platform/medius/services/job-processor/internal/record"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// maxConflicts bounds the compare-and-set retries of one update. Conflicts
// come from replicas handling events of the same job at the same moment, so a
// few retries settle them; past that, the message is redelivered later.
const maxConflicts = 16

// Bounds of the records a replica remembers: a few seconds of jobs at
// thousands a second, so a job's next event (its worker's report, its timer)
// usually finds it. A live record costs its encoding (a few hundred bytes,
// more with a large input), an ended one nothing but its entry.
const (
	cacheEntries = 1 << 16
	cacheBytes   = 32 << 20
)

// store keeps the processor's records in the executions KV bucket, one key
// per job, changed only by compare-and-set on the key's revision.
//
// It remembers the record and revision it last read or wrote of each job
// (bounded), so that an update usually costs one round trip, the write,
// instead of two. A record read from there may be stale (another replica
// wrote since), so a decision taken on it is only trusted when it leads to
// a write: the compare-and-set on the remembered revision verifies it, and
// a mismatch reloads. Any other outcome is judged again on the record as
// it is (see update).
type store struct {
	kv    jetstream.KeyValue
	cache *revcache.Cache[cached]
	locks keyLocks
}

func newStore(kv jetstream.KeyValue) *store {
	return &store{kv: kv, cache: revcache.New(cacheEntries, revcache.MaxBytes(cacheBytes, func(c cached) int { return len(c.data) }))}
}

// get reads the record of id and its revision from the bucket (never from
// the cache); nil if there is none.
func (s *store) get(ctx context.Context, id string) (*jobsv1.Job, uint64, error) {
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get record %s: %w", id, err)
	}
	rec := &jobsv1.Job{}
	if err := proto.Unmarshal(e.Value(), rec); err != nil {
		return nil, 0, fmt.Errorf("decode record %s: %w", id, err)
	}
	s.cache.Put(id, cacheEntry(rec, e.Value()), e.Revision())
	return rec, e.Revision(), nil
}

// create writes the first record of id; jetstream.ErrKeyExists if there is
// one already.
func (s *store) create(ctx context.Context, id string, rec *jobsv1.Job) error {
	data, err := proto.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode record %s: %w", id, err)
	}
	rev, err := s.kv.Create(ctx, id, data)
	if err != nil {
		return err
	}
	s.cache.Put(id, cacheEntry(rec, data), rev)
	return nil
}

// createMsg is the create of rec as a message to publish along with others
// (publishAll): a write to the key's subject that the stream refuses when
// the key has any revision, as KeyValue.Create does. Its revision goes to
// created once acknowledged. Unlike KeyValue.Create it does not recreate a
// key that was deleted; records never are, and a refusal sends the job down
// the general path, which does.
func (s *store) createMsg(id string, rec *jobsv1.Job) (outMsg, []byte, error) {
	data, err := proto.Marshal(rec)
	if err != nil {
		return outMsg{}, nil, fmt.Errorf("encode record %s: %w", id, err)
	}
	return outMsg{subject: bus.KVSubject(s.kv.Bucket(), id), raw: data, expectNew: true}, data, nil
}

// created remembers a record createMsg wrote, at revision rev.
func (s *store) created(id string, rec *jobsv1.Job, data []byte, rev uint64) {
	s.cache.Put(id, cacheEntry(rec, data), rev)
}

// known reports whether this replica has seen a record of id. Records are
// never deleted; were one, the general path that a known id takes finds out.
func (s *store) known(id string) bool {
	_, _, ok := s.cache.Get(id)
	return ok
}

// endedAt reports how many executions the record of id had when this
// replica last saw it ended (terminal), if it did. An ended attempt never
// runs again: only a restart moves an ended record on, and it does so with
// a new attempt. So "attempt k <= n is over" stays true however stale this
// is.
func (s *store) endedAt(id string) (int32, bool) {
	e, _, ok := s.cache.Get(id)
	if !ok || e.data != nil {
		return 0, false
	}
	return e.executions, true
}

// changeFunc changes a record in place (rec is nil when there is none yet)
// and returns the record to keep and what it did. Only Applied is written.
// It may run several times, on a record loaded afresh (or remembered) each
// time.
type changeFunc func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error)

// update applies change to the record of id and writes the result with
// compare-and-set (Create when absent, Update on the loaded revision). On a
// conflict another replica won: reload and apply again, so the change is
// judged against the record as it now is.
//
// The record comes from the cache when this replica has it: a change
// Applied to it is written on the remembered revision, which verifies it.
// Any other result (Ignored, AlreadyApplied, an error) acts on what may be
// an old state of the job, so change runs again on the record read afresh,
// and that result counts.
//
// Updates of one job in this replica take turns, so that its events handled
// at once (a worker's RUNNING and COMPLETED) do not make each other conflict.
func (s *store) update(ctx context.Context, id string, change changeFunc) (*jobsv1.Job, record.Outcome, error) {
	unlock, err := s.locks.lock(ctx, id)
	if err != nil {
		return nil, record.Ignored, fmt.Errorf("update record %s: %w", id, err)
	}
	defer unlock()
	fromCache := true
	for range maxConflicts {
		rec, rev, remembered, err := s.load(ctx, id, fromCache)
		if err != nil {
			return nil, record.Ignored, err
		}
		fromCache = remembered
		existed := rec != nil
		rec, outcome, err := change(rec)
		if fromCache && (err != nil || outcome != record.Applied) {
			fromCache = false
			continue
		}
		if err != nil || outcome != record.Applied {
			return rec, outcome, err
		}
		data, err := proto.Marshal(rec)
		if err != nil {
			return nil, record.Ignored, fmt.Errorf("encode record %s: %w", id, err)
		}
		if existed {
			rev, err = s.kv.Update(ctx, id, data, rev)
		} else {
			rev, err = s.kv.Create(ctx, id, data)
		}
		switch {
		case err == nil:
			s.cache.Put(id, cacheEntry(rec, data), rev)
			return rec, outcome, nil
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyExists):
			s.cache.Drop(id)
			fromCache = false
		default:
			// The write may or may not have happened: read afresh next time.
			s.cache.Drop(id)
			return nil, record.Ignored, fmt.Errorf("write record %s: %w", id, err)
		}
	}
	return nil, record.Ignored, fmt.Errorf("write record %s: still conflicting after %d attempts", id, maxConflicts)
}

// load returns the record of id: the remembered one (remembered true) if
// fromCache and this replica has it (a live one), else the bucket's.
func (s *store) load(ctx context.Context, id string, fromCache bool) (rec *jobsv1.Job, rev uint64, remembered bool, err error) {
	if fromCache {
		if e, rev, ok := s.cache.Get(id); ok && e.data != nil {
			rec := &jobsv1.Job{}
			if err := proto.Unmarshal(e.data, rec); err != nil {
				return nil, 0, false, fmt.Errorf("decode record %s: %w", id, err)
			}
			return rec, rev, true, nil
		}
	}
	rec, rev, err = s.get(ctx, id)
	return rec, rev, false, err
}

// cached is what a replica remembers of a record (its revision aside): its
// encoding, or for an ended record only how many executions it had (no
// update of an ended record is ever trusted to the cache, see update and
// endedAt).
type cached struct {
	data       []byte
	executions int32
}

func cacheEntry(rec *jobsv1.Job, data []byte) cached {
	if jobstate.IsTerminal(rec.GetStatus()) {
		return cached{executions: int32(len(rec.GetExecutions()))}
	}
	return cached{data: data}
}

// keyLocks lets one holder at a time work on a key. It holds an entry only
// while the key is locked or awaited, so its size follows the work in hand.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	ch      chan struct{} // holds a token while locked
	waiters int           // holders and waiters; the entry goes at 0
}

// lock takes id's lock, waiting until it is free or ctx ends, and returns
// its release.
func (k *keyLocks) lock(ctx context.Context, id string) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyLock{}
	}
	l := k.m[id]
	if l == nil {
		l = &keyLock{ch: make(chan struct{}, 1)}
		k.m[id] = l
	}
	l.waiters++
	k.mu.Unlock()
	leave := func() {
		k.mu.Lock()
		if l.waiters--; l.waiters == 0 {
			delete(k.m, id)
		}
		k.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; leave() }, nil
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
}
