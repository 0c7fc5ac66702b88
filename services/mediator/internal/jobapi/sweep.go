package jobapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
)

// SweepConfig tunes the sweep of jobs left NEW.
type SweepConfig struct {
	// Interval between sweeps (default 5s).
	Interval time.Duration
	// MinAge a NEW job must reach before the sweep touches it (default 10s):
	// younger ones are most likely still in their CreateJob call.
	MinAge time.Duration
	// Lookback is how far back in the jobs bucket's history a starting
	// sweep reads (default 10m): a job left NEW by a mediator that died is
	// healed by the sweep of any replica running then, else by the first
	// replica to start within Lookback of its creation.
	Lookback time.Duration
	// MaxPending bounds the jobs the sweep remembers as created and not yet
	// MinAge old (default 65536). Once it is reached, the sweep reads no
	// further until some of them are old enough to settle.
	MaxPending int
}

// Per sweep round, the bucket is read in calls of this many writes, each
// with its own short-lived consumer.
const sweepReadChunk = 1 << 14

// Sweep re-publishes JobCreated for jobs still NEW after MinAge, until ctx
// ends. A mediator that dies between storing a job and publishing it would
// otherwise lose the job.
//
// Its cost follows the writes to the jobs bucket, not the jobs it holds:
// each round reads only the headers of the records written since the last
// (see sweeper); an idle platform costs one stream info request a round.
//
// Across a restart nothing is kept: a starting sweep reads the writes of the
// last Lookback, whose creates are the jobs still as created, so it announces
// every job left NEW within Lookback, whichever process left it. A job left
// NEW longer than Lookback before a start, while no replica swept, is not
// found: Lookback must outlast the longest time no mediator runs.
//
// Every replica sweeps, each reading every write itself (through its own
// short-lived consumer), so several may announce the same stuck job: the msg
// id keeps one publish within the events stream's duplicate window, and the
// processor is idempotent beyond it. A job announced by CreateJob but still
// NEW after MinAge (a processor lagging behind) is announced again at most
// once per replica and start.
func (s *Server) Sweep(ctx context.Context, cfg SweepConfig) error {
	w := s.newSweeper(cfg)
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		if err := w.round(ctx); err != nil && ctx.Err() == nil {
			slog.WarnContext(ctx, "sweep of new jobs", "err", err)
		}
		select {
		case <-ctx.Done():
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
	// round has read, which starts at since, Lookback before the sweeper
	// was made (fixed, so rounds failing at start do not shift it).
	next  uint64
	since time.Time
	// born holds the jobs read as created and not yet settled, at most
	// cfg.MaxPending.
	born map[string]bornJob

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
	return &sweeper{srv: s, cfg: cfg, since: s.now().Add(-cfg.Lookback), born: map[string]bornJob{}}
}

// round reads what was written since the last round and settles the jobs
// created at least MinAge ago. When born is full, settling makes room and
// reading goes on, so a backlog is worked off within the round.
func (w *sweeper) round(ctx context.Context) error {
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
	if err := s.publishCreated(ctx, job); err != nil {
		return fmt.Errorf("republish job %s: %w", job.GetId(), err)
	}
	slog.DebugContext(ctx, "re-published job left new", "job", job.GetId())
	return nil
}
