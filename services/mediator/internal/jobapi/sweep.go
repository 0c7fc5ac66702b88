package jobapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// SweepConfig tunes the sweep of jobs left NEW and of restarts.
type SweepConfig struct {
	// Interval between sweeps (default 5s).
	Interval time.Duration
	// MinAge a NEW job must reach before the sweep touches it, and a
	// restart's check before it is settled (default 10s): younger ones are
	// most likely still in their CreateJob or RestartJob call.
	MinAge time.Duration
	// Lookback is how far back in the jobs bucket's history a starting
	// sweep reads at least (default 10m): a job left NEW by a mediator that
	// died is healed by the sweep of any replica running then, else by the
	// first replica to start, from the stored cursor (see Etcd) or, without
	// one, within Lookback of its creation.
	Lookback time.Duration
	// MaxPending bounds the jobs the sweep remembers as created and not yet
	// MinAge old (default 65536). Once it is reached, the sweep reads no
	// further until some of them are old enough to settle.
	MaxPending int
	// Etcd, when set, keeps the sweep's progress across restarts (see
	// Sweep), so a job left NEW is found however long no mediator ran; nil:
	// a starting sweep reads Lookback back only.
	Etcd *clientv3.Client
}

// Per sweep round, the bucket is read in calls of this many writes, each
// with its own short-lived consumer.
const sweepReadChunk = 1 << 14

// Sweep re-publishes JobCreated for jobs still NEW after MinAge, until ctx
// ends. A mediator that dies between storing a job and publishing it would
// otherwise lose the job. Its announcements are marked bus.HeaderReannounced.
//
// Its cost follows the writes to the jobs bucket, not the jobs it holds:
// each round reads only the headers of the records written since the last
// (see sweeper); an idle platform costs one stream info request a round.
//
// Across a restart the sweep's progress is kept in etcd (cfg.Etcd): a cursor,
// the stream sequence below which every create has been handled, written at
// most every sweepCursorEvery and when Sweep returns. A starting sweep reads
// from the cursor or from Lookback ago, whichever is earlier, so a job stored
// NEW before a mediator outage of any length is still announced; reading
// from an old cursor costs the writes since (at most one per retained
// record), never more. Without etcd, a job left NEW longer than Lookback
// before a start, while no replica swept, is not found.
//
// Every replica sweeps, each reading every write itself (through its own
// short-lived consumer), so several may announce the same stuck job: the msg
// id keeps one publish within the events stream's duplicate window, and the
// processor is idempotent beyond it. A job announced by CreateJob but still
// NEW after MinAge (a processor lagging behind) is announced again at most
// once per replica and start, unless the processor has a record of it: it
// is then the processor's to announce (see recover).
//
// Sweep also settles the restarts of every replica (checkRestarts): it
// announces again a restart whose announcement may be lost, once MinAge
// old. It returns nil when ctx ends, or the error that stopped that
// consumer.
func (s *Server) Sweep(ctx context.Context, cfg SweepConfig) error {
	w := s.newSweeper(cfg)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.checkRestarts(gctx, w.cfg.MinAge) })
	g.Go(func() error { return w.run(gctx) })
	return g.Wait()
}

// run sweeps every cfg.Interval until ctx ends.
func (w *sweeper) run(ctx context.Context) error {
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		if err := w.round(ctx); err != nil && ctx.Err() == nil {
			slog.WarnContext(ctx, "sweep of new jobs", "err", err)
		}
		select {
		case <-ctx.Done():
			// Keep the progress made since the last save: the next start
			// then reads less.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := w.save(sctx, true); err != nil {
				slog.WarnContext(ctx, "sweep of new jobs: keep progress", "err", err)
			}
			return nil
		case <-t.C:
		}
	}
}

// sweeper follows the writes to the jobs bucket to find jobs left NEW.
//
// The bucket keeps only each record's latest write (history 1), and a
// record's first write is its Create, storing it NEW; any later write (a
// status applied, the job withdrawn or deleted) means the job moved on and
// needs nothing. So a write read as a possible create is a job that was
// still as created when read: it is remembered in born until it is MinAge
// old, then read and, if still NEW, announced. A later write read meanwhile
// forgets it unread. A job created and moved on between two rounds is read
// once, at its latest write, which is no create, and costs nothing more.
//
// Not safe for concurrent use: Sweep's goroutine owns it.
type sweeper struct {
	srv *Server
	cfg SweepConfig
	// next is the stream sequence the next round reads from; 0 until a
	// round has read, which starts at the stored cursor or at since,
	// Lookback before the sweeper was made (fixed, so rounds failing at
	// start do not shift it), whichever is earlier.
	next  uint64
	since time.Time
	// nextAt is no later than the stored time of the write at next: the
	// time of the last write read, or of where reading started.
	nextAt time.Time
	// born holds the jobs read as created and not yet settled, at most
	// cfg.MaxPending.
	born map[string]bornJob
	// cursor keeps the progress in etcd; nil without cfg.Etcd.
	cursor *sweepCursor

	// Counts, for tests: writes noted, and records read to settle them.
	writes, gets int
}

type bornJob struct {
	seq uint64    // the create's stream sequence
	at  time.Time // when it was stored, by the NATS server's clock
}

func (s *Server) newSweeper(cfg SweepConfig) *sweeper {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.MinAge <= 0 {
		cfg.MinAge = 10 * time.Second
	}
	if cfg.Lookback <= 0 {
		cfg.Lookback = 10 * time.Minute
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 1 << 16
	}
	since := s.now().Add(-cfg.Lookback)
	w := &sweeper{srv: s, cfg: cfg, since: since, nextAt: since, born: map[string]bornJob{}}
	if cfg.Etcd != nil {
		w.cursor = &sweepCursor{cli: cfg.Etcd, every: sweepCursorEvery}
	}
	return w
}

// round reads what was written since the last round and settles the jobs
// created at least MinAge ago. When born is full, settling makes room and
// reading goes on, so a backlog is worked off within the round. The first
// round starts at the stored cursor or Lookback ago, whichever is earlier;
// every round then keeps the progress made, whatever failed.
func (w *sweeper) round(ctx context.Context) error {
	if err := w.resume(ctx); err != nil {
		return err
	}
	return errors.Join(w.work(ctx), w.save(ctx, false))
}

func (w *sweeper) work(ctx context.Context) error {
	cutoff := w.srv.now().Add(-w.cfg.MinAge)
	for {
		full, err := w.read(ctx)
		settled, serr := w.settle(ctx, cutoff)
		if err := errors.Join(err, serr); err != nil {
			return err
		}
		if !full || settled == 0 {
			return nil
		}
	}
}

// read notes the writes since w.next until it is caught up or born is full
// (reported as full).
func (w *sweeper) read(ctx context.Context) (full bool, err error) {
	for {
		n := 0
		note := func(wr jobstore.Write) bool {
			if len(w.born) >= w.cfg.MaxPending && wr.MaybeCreate {
				if _, ok := w.born[wr.ID]; !ok {
					full = true
					return false // read again once there is room
				}
			}
			n++
			w.note(wr)
			return true
		}
		next, err := w.srv.store.ReadWrites(ctx, w.srv.js, w.next, w.since, sweepReadChunk, note)
		w.next = next
		if err != nil {
			return full, fmt.Errorf("read job writes: %w", err)
		}
		if full || n < sweepReadChunk {
			return full, nil
		}
	}
}

func (w *sweeper) note(wr jobstore.Write) {
	w.writes++
	w.nextAt = wr.Time
	if b, ok := w.born[wr.ID]; ok {
		if wr.Seq != b.seq {
			delete(w.born, wr.ID) // written again: it moved on
		}
		return
	}
	if wr.MaybeCreate {
		w.born[wr.ID] = bornJob{seq: wr.Seq, at: wr.Time}
	}
}

// settle reads the jobs in born stored before cutoff and announces those
// still NEW; it returns how many it forgot. A job whose announcement failed
// stays, to be tried again next round; one announced is forgotten, since the
// publish was acknowledged and the processor's consumer is durable.
func (w *sweeper) settle(ctx context.Context, cutoff time.Time) (int, error) {
	settled := 0
	for id, b := range w.born {
		if b.at.After(cutoff) {
			continue // too young to be stuck
		}
		if err := ctx.Err(); err != nil {
			return settled, err
		}
		w.gets++
		job, _, err := w.srv.store.Get(ctx, id)
		if errors.Is(err, jobstore.ErrNotFound) {
			delete(w.born, id)
			settled++
			continue
		}
		if err != nil {
			return settled, err
		}
		if job.GetStatus() == jobsv1.JobStatus_JOB_STATUS_NEW {
			if err := w.srv.recover(ctx, job); err != nil {
				slog.WarnContext(ctx, "recover new job", "job", id, "err", err)
				continue
			}
		}
		delete(w.born, id)
		settled++
	}
	return settled, nil
}

// recover finishes what CreateJob may not have: the request id claim, then
// the JobCreated event. A job whose request id was claimed by another job
// was a duplicate whose call never returned it, so it is withdrawn instead.
func (s *Server) recover(ctx context.Context, job *jobsv1.Job) error {
	if rid := job.GetRequestId(); rid != "" {
		owner, err := s.store.ClaimRequest(ctx, job.GetTenant(), rid, job.GetId())
		if err != nil {
			return err
		}
		if owner != job.GetId() {
			slog.InfoContext(ctx, "withdrawing duplicate job of a repeated request", "job", job.GetId(), "kept", owner)
			if err := s.store.Delete(ctx, job.GetId()); err != nil {
				return err
			}
			s.release(ctx, job.GetTenant(), job.GetId())
			return nil
		}
	}
	// A job the processor has a record of was announced and is its to
	// move on: it may look NEW here only because the processor holds its
	// SCHEDULED back, or died holding it (its JobCreated, acknowledged only
	// once that is out, then goes to another replica, which announces it).
	// A processor older than this one would send its work item again when
	// announced again, past the duplicate windows, while the first may
	// still be queued: the job would run twice.
	if _, known, err := s.executions(ctx, job.GetId()); err != nil {
		return fmt.Errorf("republish job %s: %w", job.GetId(), err)
	} else if known {
		slog.DebugContext(ctx, "job left new is the processor's already", "job", job.GetId())
		return nil
	}
	if err := s.reannounce(ctx, job); err != nil {
		return fmt.Errorf("republish job %s: %w", job.GetId(), err)
	}
	slog.DebugContext(ctx, "re-published job left new", "job", job.GetId())
	return nil
}

// reannounce publishes JobCreated for job again, marked bus.HeaderReannounced:
// the job may have been handled long ago, so the processor must read its
// record before acting. The msg id is CreateJob's (publishCreated), so within
// the duplicate window the stream keeps one of the two, and of several
// replicas' re-announcements.
func (s *Server) reannounce(ctx context.Context, job *jobsv1.Job) error {
	msg, err := bus.NewMsg(ctx, bus.SubjectJobCreated, &eventsv1.JobCreated{Job: job})
	if err != nil {
		return err
	}
	msg.Header.Set(bus.HeaderReannounced, "true")
	if _, err := s.js.PublishMsg(ctx, msg, jetstream.WithMsgID("created-"+job.GetId())); err != nil {
		return fmt.Errorf("publish %s: %w", bus.SubjectJobCreated, err)
	}
	return nil
}

// sweepCursorKey holds the sweep's cursor, shared by every replica.
const sweepCursorKey = "/medius/jobsweep-cursor"

// sweepCursorEvery is how often at most a sweeper writes its cursor.
const sweepCursorEvery = 5 * time.Second

// cursorPos is a position in the jobs bucket's stream below which every
// create has been handled: announced (an acknowledged publish, which the
// processor's durable consumer will read), or found moved on or gone.
type cursorPos struct {
	Seq uint64 `json:"seq"`
	// Time is no later than the stored time of the write at Seq, to tell
	// whether Seq is before or after Lookback ago.
	Time time.Time `json:"time"`
	// Stream is when the bucket's stream was created: a sequence of a lost
	// and re-created stream says nothing about the new one.
	Stream time.Time `json:"stream"`
}

// sweepCursor is a sweeper's view of the cursor stored in etcd.
//
// All replicas share one key, and it only moves forward: a replica writes
// its own position (the minimum of its pending creates and where it reads
// next), and only over a value it has read (compare-and-set on the key's
// revision) and that is behind it. Each replica reads every write itself, so
// its position never passes a create it has not handled; a stored position
// ahead of another replica's pending create is one the writing replica
// handled itself (announced it, or saw it move on). A replica behind does not
// pull it back. One key per replica was not chosen: a start would have to
// take the earliest of all, and the keys of replicas gone for good (pod names
// change on every restart) would hold it back until removed.
type sweepCursor struct {
	cli   *clientv3.Client
	every time.Duration

	loaded  bool
	rev     int64     // the key's mod revision as last read or written; 0: absent
	stored  cursorPos // its value
	savedAt time.Time // when this sweeper last wrote it
	stream  time.Time // the bucket stream's creation, as last asked
	kv      jetstream.KeyValue
}

// resume reads the stored cursor before the first round and starts there if
// it is earlier than Lookback ago. Rounds fail until it is read: starting
// without it and saving a later position would skip what it guards.
func (w *sweeper) resume(ctx context.Context) error {
	c := w.cursor
	if c == nil || c.loaded {
		return nil
	}
	resp, err := c.cli.Get(ctx, sweepCursorKey)
	if err != nil {
		return fmt.Errorf("read sweep cursor: %w", err)
	}
	c.rev, c.stored = 0, cursorPos{}
	if len(resp.Kvs) > 0 {
		c.rev = resp.Kvs[0].ModRevision
		c.stored = parseCursor(ctx, resp.Kvs[0].Value)
	}
	if c.stream, err = w.streamCreated(ctx); err != nil {
		return err
	}
	if p := c.stored; p.Seq > 0 && p.Stream.Equal(c.stream) && p.Time.Before(w.since) {
		w.next, w.nextAt = p.Seq, p.Time
	}
	c.loaded = true
	return nil
}

func parseCursor(ctx context.Context, v []byte) cursorPos {
	var p cursorPos
	if err := json.Unmarshal(v, &p); err != nil {
		// Overwritten by the next save; meanwhile Lookback is read.
		slog.WarnContext(ctx, "sweep cursor unreadable, ignored", "err", err)
		return cursorPos{}
	}
	return p
}

// position is the sweeper's cursor: the earliest of its pending creates and
// where it reads next.
func (w *sweeper) position() cursorPos {
	p := cursorPos{Seq: w.next, Time: w.nextAt}
	for _, b := range w.born {
		if b.seq < p.Seq {
			p.Seq, p.Time = b.seq, b.at
		}
	}
	return p
}

// save writes the sweeper's position when it is ahead of the stored cursor,
// at most every c.every unless forced.
func (w *sweeper) save(ctx context.Context, force bool) error {
	c := w.cursor
	if c == nil || !c.loaded || w.next == 0 {
		return nil
	}
	now := w.srv.now()
	if !force && now.Sub(c.savedAt) < c.every {
		return nil
	}
	pos := w.position()
	if c.stored.Stream.Equal(c.stream) && pos.Seq <= c.stored.Seq {
		return nil // not moved past what is stored
	}
	var err error
	if pos.Stream, err = w.streamCreated(ctx); err != nil {
		return err
	}
	c.stream = pos.Stream
	val, err := json.Marshal(pos)
	if err != nil {
		return fmt.Errorf("save sweep cursor: %w", err)
	}
	// A few tries: another replica may have written in between.
	for range 3 {
		resp, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(sweepCursorKey), "=", c.rev)).
			Then(clientv3.OpPut(sweepCursorKey, string(val))).
			Else(clientv3.OpGet(sweepCursorKey)).
			Commit()
		if err != nil {
			return fmt.Errorf("save sweep cursor: %w", err)
		}
		if resp.Succeeded {
			c.rev, c.stored, c.savedAt = resp.Header.Revision, pos, now
			return nil
		}
		c.rev, c.stored = 0, cursorPos{}
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			c.rev, c.stored = kvs[0].ModRevision, parseCursor(ctx, kvs[0].Value)
		}
		if c.stored.Stream.Equal(pos.Stream) && c.stored.Seq >= pos.Seq {
			c.savedAt = now
			return nil // another replica is as far or further
		}
	}
	return errors.New("save sweep cursor: changed concurrently, next round tries again")
}

// streamCreated tells the jobs bucket's stream apart from one lost and
// created again under the same name.
func (w *sweeper) streamCreated(ctx context.Context) (time.Time, error) {
	c := w.cursor
	if c.kv == nil {
		kv, err := w.srv.js.KeyValue(ctx, bus.BucketJobs)
		if err != nil {
			return time.Time{}, fmt.Errorf("sweep cursor: jobs bucket: %w", err)
		}
		c.kv = kv
	}
	st, err := c.kv.Status(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("sweep cursor: jobs bucket status: %w", err)
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return time.Time{}, fmt.Errorf("sweep cursor: jobs bucket status of type %T", st)
	}
	return bs.StreamInfo().Created, nil
}
