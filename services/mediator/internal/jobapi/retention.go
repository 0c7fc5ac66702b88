package jobapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
)

// DefaultRetention keeps a terminal job without a ttl for 90 days.
const DefaultRetention = 90 * 24 * time.Hour

// RetentionConfig tunes the deletion of old terminal jobs.
type RetentionConfig struct {
	// Period a terminal job is kept when it has no ttl (default 90 days).
	Period time.Duration
	// Interval between passes (default 1h).
	Interval time.Duration
}

// Retain deletes terminal jobs whose ttl (else Period) has passed since they
// ended, with their index entry and request id, until ctx ends. Jobs that
// have not ended are never deleted. Every replica may run it: deletes are
// idempotent.
func (s *Server) Retain(ctx context.Context, cfg RetentionConfig) error {
	if cfg.Period <= 0 {
		cfg.Period = DefaultRetention
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Hour
	}
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		n, err := s.RetainOnce(ctx, cfg.Period)
		if err != nil && ctx.Err() == nil {
			slog.WarnContext(ctx, "retention pass", "err", err)
		}
		if n > 0 {
			slog.InfoContext(ctx, "retention deleted jobs", "count", n)
		}
	}
}

// RetainOnce makes one pass and returns how many jobs it deleted.
func (s *Server) RetainOnce(ctx context.Context, period time.Duration) (int, error) {
	ids, err := s.store.IDs(ctx)
	if err != nil {
		return 0, err
	}
	now, deleted := s.now(), 0
	for _, id := range ids {
		job, _, err := s.store.Get(ctx, id)
		if errors.Is(err, jobstore.ErrNotFound) {
			continue
		}
		if err != nil {
			return deleted, err
		}
		if !expired(job, now, period) {
			continue
		}
		if err := s.releaseEnded(ctx, job); err != nil {
			return deleted, err
		}
		if err := s.store.Delete(ctx, id); err != nil {
			return deleted, err
		}
		deleted++
		if s.index != nil {
			if err := s.index.Delete(ctx, job.GetTenant(), id); err != nil {
				return deleted, fmt.Errorf("unindex expired job %s: %w", id, err)
			}
		}
		if rid := job.GetRequestId(); rid != "" {
			if owner, ok, err := s.store.RequestOwner(ctx, job.GetTenant(), rid); err == nil && ok && owner == id {
				_ = s.store.ForgetRequest(ctx, job.GetTenant(), rid)
			}
		}
	}
	return deleted, nil
}

func expired(job *jobsv1.Job, now time.Time, period time.Duration) bool {
	if !jobstate.IsTerminal(job.GetStatus()) {
		return false
	}
	end := job.GetEndTime()
	if end == nil {
		end = job.GetUpdateTime()
	}
	keep := period
	if ttl := job.GetTtl(); ttl != nil && ttl.AsDuration() > 0 {
		keep = ttl.AsDuration()
	}
	return now.Sub(end.AsTime()) >= keep
}

// releaseEnded frees the quota slots job, ended, may still hold (its
// release lost) before its record goes: a marker without its job is taken
// for an admission whose job never came, which the quota reconciliation
// undoes, giving the job's count of its period back.
func (s *Server) releaseEnded(ctx context.Context, job *jobsv1.Job) error {
	if s.admit == nil {
		return nil
	}
	if err := s.admit.ReleaseEnded(ctx, job); err != nil {
		return fmt.Errorf("release the quota slots of job %s: %w", job.GetId(), err)
	}
	return nil
}
