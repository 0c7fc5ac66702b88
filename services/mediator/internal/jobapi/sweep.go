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
}

// Sweep re-publishes JobCreated for jobs still NEW after MinAge, until ctx
// ends. A mediator that dies between storing a job and publishing it would
// otherwise lose the job; the msg id de-duplicates the publish, and the
// processor is idempotent, so publishing a job twice is harmless. Every
// replica may sweep.
func (s *Server) Sweep(ctx context.Context, cfg SweepConfig) error {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.MinAge <= 0 {
		cfg.MinAge = 10 * time.Second
	}
	// Jobs seen past NEW never return to it: remember them so each sweep
	// reads only the records that may still need it.
	done := map[string]bool{}
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := s.sweepOnce(ctx, cfg.MinAge, done); err != nil && ctx.Err() == nil {
			slog.WarnContext(ctx, "sweep of new jobs", "err", err)
		}
	}
}

func (s *Server) sweepOnce(ctx context.Context, minAge time.Duration, done map[string]bool) error {
	ids, err := s.store.IDs(ctx)
	if err != nil {
		return err
	}
	cutoff := s.now().Add(-minAge)
	for _, id := range ids {
		if done[id] {
			continue
		}
		if t, ok := jobstore.IDTime(id); ok && t.After(cutoff) {
			continue // too young to be stuck
		}
		job, _, err := s.store.Get(ctx, id)
		if errors.Is(err, jobstore.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if job.GetStatus() != jobsv1.JobStatus_JOB_STATUS_NEW {
			done[id] = true
			continue
		}
		if job.GetCreateTime().AsTime().After(cutoff) {
			continue
		}
		if err := s.recover(ctx, job); err != nil {
			slog.WarnContext(ctx, "recover new job", "job", id, "err", err)
		}
	}
	return nil
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
