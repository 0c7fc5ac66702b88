package jobapi

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/mediator/internal/jobindex"
	"github.com/nats-io/nats.go/jetstream"
)

// DurableIndex is the mediator's consumer of JobCreated that keeps the
// listing index complete; replicas share it.
const DurableIndex = "mediator-index"

// indexConcurrency lets many entries share one etcd transaction.
const indexConcurrency = 128

func indexEntry(job *jobsv1.Job) jobindex.Entry {
	return jobindex.Entry{ID: job.GetId(), Profile: job.GetProfile(), Tags: job.GetTags()}
}

// IndexCreated makes sure every announced job is indexed, until ctx ends.
// CreateJob indexes its job itself, so this consumer usually only reads; it
// is what makes the index complete when that write failed or its process
// died before it (the JobCreated is durable).
func (s *Server) IndexCreated(ctx context.Context, js jetstream.JetStream) error {
	if s.index == nil {
		return nil
	}
	cfg := bus.ConsumerConfig{Stream: bus.StreamEvents, Durable: DurableIndex, Filter: []string{bus.SubjectJobCreated},
		Concurrency: indexConcurrency, MaxAckPending: 4 * indexConcurrency}
	return bus.Consume(ctx, js, cfg, func(ctx context.Context, msg jetstream.Msg) error {
		var ev eventsv1.JobCreated
		if err := bus.Decode(msg.Data(), &ev); err != nil {
			return err
		}
		job := ev.GetJob()
		if job.GetId() == "" || job.GetTenant() == "" {
			return bus.Permanent(fmt.Errorf("index: JobCreated without job id or tenant"))
		}
		return s.index.Ensure(ctx, job.GetTenant(), indexEntry(job))
	})
}

// indexWrite is a job's index entry being written (nil: no index).
type indexWrite chan error

// startIndex writes job's index entry on ctx while the caller goes on; the
// caller always ends it with finishIndex.
func (s *Server) startIndex(ctx context.Context, job *jobsv1.Job) indexWrite {
	if s.index == nil {
		return nil
	}
	w := make(indexWrite, 1)
	go func() { w <- s.index.Put(ctx, job.GetTenant(), indexEntry(job)) }()
	return w
}

// unindexWait bounds the removal of an entry whose job was not created.
const unindexWait = 5 * time.Second

// finishIndex waits for w. created tells whether job is, or may be, stored:
// a failed write is then left to the index consumer (the JobCreated is
// durable); else the entry written is removed, best effort, since the
// listing skips an entry whose job does not exist.
func (s *Server) finishIndex(ctx context.Context, w indexWrite, job *jobsv1.Job, created bool) {
	if w == nil {
		return
	}
	err := <-w
	switch {
	case created && err != nil:
		slog.WarnContext(ctx, "job stored, index deferred to its consumer", "job", job.GetId(), "err", err)
	case !created && err == nil:
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unindexWait)
		defer cancel()
		if err := s.index.Delete(dctx, job.GetTenant(), job.GetId()); err != nil {
			slog.WarnContext(ctx, "unindex job not created", "job", job.GetId(), "err", err)
		}
	}
}
