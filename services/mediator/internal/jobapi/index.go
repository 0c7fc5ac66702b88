package jobapi

import (
	"context"
	"fmt"

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
