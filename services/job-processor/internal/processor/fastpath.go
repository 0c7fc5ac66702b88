package processor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/job-processor/internal/record"
	"github.com/medius-platform/medius/services/job-processor/internal/selection"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// outMsg is one message of publishAll.
type outMsg struct {
	subject, msgID string
	m              proto.Message
	// header holds headers beyond those every message gets.
	header nats.Header
}

// publishAll publishes msgs in order without waiting for each ack in turn,
// then waits for all of them: one round trip instead of one each. Like
// bus.Publish, each carries its msg id, type and the trace context.
func (p *Processor) publishAll(ctx context.Context, msgs ...outMsg) error {
	futs := make([]jetstream.PubAckFuture, 0, len(msgs))
	for _, o := range msgs {
		data, err := proto.Marshal(o.m)
		if err != nil {
			return fmt.Errorf("marshal %T: %w", o.m, err)
		}
		nm := &nats.Msg{Subject: o.subject, Data: data, Header: nats.Header{}}
		for k, v := range o.header {
			nm.Header[k] = v
		}
		nm.Header.Set(bus.HeaderType, string(o.m.ProtoReflect().Descriptor().FullName()))
		otel.GetTextMapPropagator().Inject(ctx, bus.HeaderCarrier(nm.Header))
		f, err := p.cfg.JS.PublishMsgAsync(nm, jetstream.WithMsgID(o.msgID))
		if err != nil {
			return fmt.Errorf("publish %s: %w", o.subject, err)
		}
		futs = append(futs, f)
	}
	for i, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("publish %s: %w", msgs[i].subject, err)
		case <-ctx.Done():
			return fmt.Errorf("publish %s: %w", msgs[i].subject, ctx.Err())
		}
	}
	return nil
}

// createScheduled handles a new job in one record write when a service can
// take it now: the record is created SCHEDULED with its first execution,
// then the work item and SCHEDULED are published together. QUEUED is not
// announced: the job never waited, and the mediator takes NEW -> SCHEDULED.
// It reports false (and no error) when it did nothing: no candidate now, or
// the record exists already (a redelivery), both handled by the general
// path. The create is the existence check: no read comes first.
func (p *Processor) createScheduled(ctx context.Context, job *jobsv1.Job) (bool, error) {
	id := job.GetId()
	if p.store.known(id) {
		return false, nil // a redelivery: this replica has seen the record
	}
	// The same select and dispatch spans as the general path, so the job's
	// trace shows them whichever path it took.
	sctx, span := tracer.Start(ctx, "select", trace.WithAttributes(attribute.String("medius.job_id", id), attribute.String("medius.profile", job.GetProfile())))
	cand, err := p.cfg.Selector.Select(sctx, selection.Request{Profile: job.GetProfile(), Region: job.GetRegion()})
	endSpan(span, err)
	if err != nil {
		return false, nil //nolint:nilerr // the general path waits or retries
	}
	ctx, span = tracer.Start(ctx, "dispatch", trace.WithAttributes(attribute.String("medius.job_id", id), attribute.String("medius.service", cand.Service)))
	defer span.End()
	now := p.cfg.Now()
	rec := record.New(job, now)
	if record.Schedule(rec, cand.Service, now) != record.Applied {
		return false, nil
	}
	if err := p.store.create(ctx, id, rec); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return false, nil // a redelivery, or another delivery got there first
		}
		return false, fmt.Errorf("create record of job %s: %w", id, err)
	}
	p.metrics.dispatched(ctx, rec.GetProfile(), cand.Service)
	slog.DebugContext(ctx, "job dispatched", "job_id", id, "attempt", 1, "service", cand.Service, "cost", cand.Cost, "load", cand.Load)
	item := record.WorkItem(rec)
	if d := effectiveTimeout(rec, p.profile(ctx, rec.GetProfile())); d > 0 {
		item.Timeout = durationpb.New(d + p.cfg.TimeoutGrace)
	}
	// A failure here is healed by redelivery: the record is SCHEDULED, and
	// advance publishes the same work item and announcement again.
	out := []outMsg{
		{subject: bus.SubjectWork(cand.Service, id), msgID: record.WorkMsgID(rec), m: item},
		{subject: bus.SubjectJobStatus(id), msgID: record.StatusMsgID(rec), m: record.StatusEvent(rec)}}
	if rec.GetDeadline() != nil {
		out = append(out, p.deadlineTimer(rec))
	}
	if err := p.publishAll(ctx, out...); err != nil {
		return true, fmt.Errorf("dispatch job %s: %w", id, err)
	}
	return true, nil
}
