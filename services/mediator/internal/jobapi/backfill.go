package jobapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/medius-platform/medius/services/mediator/internal/quota"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// backfillDoneKey marks an index built for every stored job, so the scan
// runs once per installation (jobs stored before the index existed).
const backfillDoneKey = "/medius/jobindex-backfilled"

// Backfill indexes every stored job once, in the background of the first
// start with an index; later starts only read the marker.
func (s *Server) Backfill(ctx context.Context, cli *clientv3.Client) error {
	if s.index == nil {
		return nil
	}
	resp, err := cli.Get(ctx, backfillDoneKey)
	if err != nil {
		return fmt.Errorf("read backfill marker: %w", err)
	}
	if len(resp.Kvs) > 0 {
		return nil
	}
	ids, err := s.store.IDs(ctx)
	if err != nil {
		return err
	}
	for _, id := range ids {
		job, _, err := s.store.Get(ctx, id)
		if errors.Is(err, jobstore.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if err := s.index.Put(ctx, job.GetTenant(), indexEntry(job)); err != nil {
			return err
		}
	}
	if _, err := cli.Put(ctx, backfillDoneKey, time.Now().UTC().Format(time.RFC3339)); err != nil {
		return fmt.Errorf("write backfill marker: %w", err)
	}
	slog.InfoContext(ctx, "job index backfilled", "jobs", len(ids))
	return nil
}

// QuotaMarkers lists the slots held (quota.Admitter).
type QuotaMarkers interface {
	Markers(ctx context.Context) ([]quota.Marker, error)
}

// ReconcileQuota frees the slots of runs that are over while their release
// was lost (a crash between admission and storing the job or its restart,
// a job deleted by hand, a run ended under a mediator that frees only
// older-layout markers): the job is gone or ended, or runs as another run
// (quota.Marker.Ended). Slots younger than minAge are left alone: their
// job may be in its CreateJob or RestartJob call.
//
// A first run's slot whose job does not exist is an admission whose job
// was never created (its mediator died first, or the admission landed
// after its call had given up): it is undone, which also gives back the
// job it counted of its period. (A job that ran, lost its release and was
// deleted within minAge would get its count back too: rare, and to the
// tenant's favour.)
func (s *Server) ReconcileQuota(ctx context.Context, markers QuotaMarkers, minAge time.Duration) (int, error) {
	if s.admit == nil {
		return 0, nil
	}
	ms, err := markers.Markers(ctx)
	if err != nil {
		return 0, err
	}
	freed := 0
	for _, m := range ms {
		if s.now().Sub(m.Admitted) < minAge {
			continue
		}
		job, _, err := s.store.Get(ctx, m.Job)
		switch {
		case errors.Is(err, jobstore.ErrNotFound):
			job = nil
		case err != nil:
			return freed, err
		}
		if !m.Ended(job) {
			continue
		}
		if job == nil && m.Run == quota.FirstRun {
			// A restart's marker of run 1 is left to ReleaseRun.
			if err := s.admit.Unadmit(ctx, m.Tenant, m.Job); err != nil {
				return freed, err
			}
		}
		if err := s.admit.ReleaseRun(ctx, m.Tenant, m.Job, m.Run); err != nil {
			return freed, err
		}
		freed++
	}
	return freed, nil
}
