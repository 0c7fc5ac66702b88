package jobapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"google.golang.org/grpc"
)

// MaxWatchesPerTenant bounds the watches a tenant has open on one mediator
// process at once: each holds a stream (SSE or gRPC) and a NATS watcher.
const MaxWatchesPerTenant = 64

// watchCounts counts open watches per tenant.
type watchCounts struct {
	mu   sync.Mutex
	open map[string]int
}

// take counts one more watch of tenant, refusing it past
// MaxWatchesPerTenant; done counts it off.
func (w *watchCounts) take(tenant string) (done func(), err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.open[tenant] >= MaxWatchesPerTenant {
		return nil, problem.ResourceExhausted("too-many-watches",
			fmt.Sprintf("tenant %s has %d watches open on this mediator, the limit: end one, or poll GET /v1/jobs/{id}", tenant, MaxWatchesPerTenant))
	}
	if w.open == nil {
		w.open = map[string]int{}
	}
	w.open[tenant]++
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.open[tenant]--; w.open[tenant] <= 0 {
			delete(w.open, tenant)
		}
	}, nil
}

// Watch calls send with the caller's job id as it is now, then after its
// changes, in order, and returns after a terminal state was sent (or when
// ctx ends, or send fails). The record's bucket keeps its latest state
// only: states written faster than they are read may come as the latest. Another tenant's job is NotFound. A tenant has at
// most MaxWatchesPerTenant open at once (ResourceExhausted).
func (s *Server) Watch(ctx context.Context, id string, send func(*jobsv1.Job) error) error {
	tenant, err := auth.TenantFrom(ctx)
	if err != nil {
		return err
	}
	done, err := s.watches.take(tenant)
	if err != nil {
		return err
	}
	defer done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := s.store.Watch(ctx, id)
	if errors.Is(err, jobstore.ErrNotFound) {
		return problem.NotFound("job", id)
	}
	if err != nil {
		return storeError(ctx, err)
	}
	first := true
	var last *jobsv1.Job
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case job, ok := <-ch:
			if !ok {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return problem.NotFound("job", id) // deleted while watched
			}
			if job == nil {
				if first {
					return problem.NotFound("job", id)
				}
				continue
			}
			if job.GetTenant() != tenant {
				return problem.NotFound("job", id)
			}
			first = false
			// Record writes that change nothing a watcher sees (e.g. a
			// claim completed by the sweep) are not news.
			if last != nil && last.GetStatus() == job.GetStatus() && last.GetProgress() == job.GetProgress() &&
				last.GetStatusMessage() == job.GetStatusMessage() {
				continue
			}
			if err := send(job); err != nil {
				return fmt.Errorf("send job %s: %w", id, err)
			}
			last = job
			if jobstate.IsTerminal(job.GetStatus()) {
				return nil
			}
		}
	}
}

// WatchJob implements jobsv1.JobServiceServer.
func (s *Server) WatchJob(req *jobsv1.WatchJobRequest, stream grpc.ServerStreamingServer[jobsv1.Job]) error {
	err := s.Watch(stream.Context(), req.GetId(), stream.Send)
	if err != nil && stream.Context().Err() == nil {
		slog.DebugContext(stream.Context(), "watch ended", "job", req.GetId(), "err", err)
	}
	return err
}

// DeleteJob implements jobsv1.JobServiceServer: only a terminal job may go,
// so a running job never loses its record.
func (s *Server) DeleteJob(ctx context.Context, req *jobsv1.DeleteJobRequest) (*jobsv1.DeleteJobResponse, error) {
	job, _, err := s.load(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	if !jobstate.IsTerminal(job.GetStatus()) {
		return nil, problem.FailedPrecondition("job-not-terminal",
			fmt.Sprintf("job %s is %s: cancel it and wait for it to end before deleting it", job.GetId(), jobstate.Name(job.GetStatus())))
	}
	if err := s.releaseEnded(ctx, job); err != nil {
		return nil, storeError(ctx, err)
	}
	if err := s.store.Delete(ctx, job.GetId()); err != nil {
		return nil, storeError(ctx, err)
	}
	if s.index != nil {
		if err := s.index.Delete(ctx, job.GetTenant(), job.GetId()); err != nil {
			// The listing skips entries whose job is gone.
			slog.WarnContext(ctx, "unindex deleted job", "job", job.GetId(), "err", err)
		}
	}
	slog.InfoContext(ctx, "job deleted", "job", job.GetId())
	return &jobsv1.DeleteJobResponse{}, nil
}
