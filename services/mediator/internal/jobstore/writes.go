package jobstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Write is one write to a job record as the bucket's stream still holds it:
// which record, when, and whether it may have created the record. The record
// itself is not read.
type Write struct {
	ID string
	// Seq is the write's stream sequence, the record's revision after it.
	Seq uint64
	// Time is when the stream stored the write.
	Time time.Time
	// MaybeCreate is false for a write known not to be the record's first:
	// an update (its compare-and-set names a revision), a delete or a purge.
	MaybeCreate bool
}

// The stream headers telling a write's kind: the KV client marks deletes and
// purges, and a compare-and-set write carries the revision it expected (0 for
// Create), which the stream stores with the message. Were a server ever to
// drop that header, every put would read as a possible create: more records
// read by the sweep, none missed.
const (
	kvOperationHdr     = "KV-Operation"
	expectedLastSeqHdr = "Nats-Expected-Last-Subject-Sequence"
)

// writesBatch is how many writes one pull request asks for.
const writesBatch = 1000

// ReadWrites calls fn with each write to a job record in the bucket's stream,
// in stream order, starting at stream sequence from, or, when from is 0, at the
// first write stored at or after since. It stops at the last write stored
// when it was called, after limit writes, or when fn returns false, and
// returns the sequence to read from next time (the write fn refused, if it
// did). js is the JetStream context the bucket was opened with. Should the
// stream have been lost and made anew, behind from, it is read from its start.
//
// The bucket keeps one message per key (history 1), so a record written
// several times since from is seen once, at its latest write, and a write
// seen as MaybeCreate was, when read, the record's latest: the record had not
// been written since it was created. Only headers are read, through an
// ephemeral consumer deleted on return; a call with nothing new to read costs
// one stream info request and no consumer.
func (s *Store) ReadWrites(ctx context.Context, js jetstream.JetStream, from uint64, since time.Time, limit int, fn func(Write) bool) (uint64, error) {
	st, err := s.kv.Status(ctx)
	if err != nil {
		return from, fmt.Errorf("read job writes: bucket status: %w", err)
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return from, fmt.Errorf("read job writes: bucket status of type %T", st)
	}
	info := bs.StreamInfo()
	last := info.State.LastSeq
	if from > last+1 {
		// The stream is behind the position: it was lost and created
		// again, so all it holds was written after the position was taken.
		from = max(info.State.FirstSeq, 1)
	}
	if from > last || len(info.Config.Subjects) == 0 {
		return from, nil
	}
	// "$KV.<bucket>.>": job ids are single-token keys, the idempotency
	// records ("req.<tenant>.<hash>") are not.
	prefix := strings.TrimSuffix(info.Config.Subjects[0], ">")
	cfg := jetstream.ConsumerConfig{
		FilterSubject: prefix + "*",
		AckPolicy:     jetstream.AckNonePolicy,
		HeadersOnly:   true,
		MemoryStorage: true,
		Replicas:      1,
		// Removed by the server should this process die before deleting it.
		InactiveThreshold: time.Minute,
	}
	if from > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from
	} else {
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := js.CreateConsumer(ctx, info.Config.Name, cfg)
	if err != nil {
		return from, fmt.Errorf("read job writes: create consumer: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = js.DeleteConsumer(dctx, info.Config.Name, cons.CachedInfo().Name)
	}()
	// Whatever this call reads, everything stored up to last that it did
	// not read was no job record's latest write by the time it looked.
	caughtUp := max(from, last+1)
	if cons.CachedInfo().NumPending == 0 {
		return caughtUp, nil
	}
	next := from
	var consumerSeq uint64
	for n := 0; n < limit; {
		batch, err := cons.FetchNoWait(min(limit-n, writesBatch))
		if err != nil {
			return next, fmt.Errorf("read job writes: %w", err)
		}
		got, done := 0, false
		for msg := range batch.Messages() {
			if done {
				continue // drained: the consumer goes on return
			}
			got++
			md, err := msg.Metadata()
			if err != nil {
				return next, fmt.Errorf("read job writes: %w", err)
			}
			if md.Sequence.Consumer != consumerSeq+1 {
				// A message lost on the way: read on from it next time.
				return next, nil
			}
			consumerSeq = md.Sequence.Consumer
			key := strings.TrimPrefix(msg.Subject(), prefix)
			if ValidID(key) {
				h := msg.Headers()
				expected := h.Get(expectedLastSeqHdr)
				w := Write{
					ID:          key,
					Seq:         md.Sequence.Stream,
					Time:        md.Timestamp,
					MaybeCreate: h.Get(kvOperationHdr) == "" && (expected == "" || expected == "0"),
				}
				if !fn(w) {
					return w.Seq, nil
				}
			}
			next, n = md.Sequence.Stream+1, n+1
			if md.NumPending == 0 || md.Sequence.Stream >= last {
				next, done = max(next, caughtUp), true
			} else if n >= limit {
				done = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return next, fmt.Errorf("read job writes: %w", err)
		}
		if got == 0 {
			// Nothing left: what was pending was overwritten or deleted
			// meanwhile.
			return max(next, caughtUp), nil
		}
		if done {
			break
		}
	}
	return next, nil
}
