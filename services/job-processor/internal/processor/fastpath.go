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
	// raw, when set, is published as it is instead of m, without headers
	// (a KV value); expectNew makes the stream refuse it if the subject has
	// any message (a KV create, a held SCHEDULED).
	raw       []byte
	expectNew bool
	// announces names the job whose state this message announces: any SCHEDULED
	// of it still held back is then dropped (see held.go).
	announces string
}

// errKeyExists: a create of publishAll found its key written already.
var errKeyExists = jetstream.ErrKeyExists

// publishAll publishes msgs in order without waiting for each ack in turn,
// then waits for all of them: one round trip instead of one each. Like
// bus.Publish, each carries its msg id, type and the trace context. It
// returns each message's ack (nil if it failed), and the first error (a
// create refused because its key exists is errKeyExists). A message the
// client could not send stops the ones after it, which may depend on it (a
// work item on its record's create); one the stream refuses does not.
func (p *Processor) publishAll(ctx context.Context, msgs ...outMsg) ([]*jetstream.PubAck, error) {
	acks, errs := p.publishEach(ctx, msgs, true)
	for _, err := range errs {
		if err != nil {
			return acks, err
		}
	}
	return acks, nil
}

// errNotSent: a message publishAll did not send, as one before it could not
// be.
var errNotSent = errors.New("not sent: an earlier message could not be")

// publishEach is publishAll with each message's own outcome: errs[i] is
// msgs[i]'s error, nil when acks[i] is its ack. Unless chained, a message
// the client cannot send stops nothing.
func (p *Processor) publishEach(ctx context.Context, msgs []outMsg, chained bool) ([]*jetstream.PubAck, []error) {
	futs := make([]jetstream.PubAckFuture, len(msgs))
	errs := make([]error, len(msgs))
	// The held SCHEDULED an announcement makes moot: dropped as it is sent
	// (it must not go out after it), settled once it is stored.
	var released []*heldMsg // made for the first that releases one
	defer func() {
		for i, e := range released {
			if e != nil && errs[i] == nil {
				e.settle()
			}
		}
	}()
	for i, o := range msgs {
		if chained && i > 0 && errs[i-1] != nil {
			errs[i] = fmt.Errorf("publish %s: %w", o.subject, errNotSent)
			continue
		}
		if e := p.released(o); e != nil {
			if released == nil {
				released = make([]*heldMsg, len(msgs))
			}
			released[i] = e
		}
		futs[i], errs[i] = p.publishAsync(ctx, o)
	}
	acks := make([]*jetstream.PubAck, len(msgs))
	for i, f := range futs {
		if f == nil {
			continue
		}
		select {
		case ack := <-f.Ok():
			acks[i] = ack
		case err := <-f.Err():
			if msgs[i].expectNew && bus.IsWrongLastSequence(err) {
				err = errKeyExists
			}
			errs[i] = fmt.Errorf("publish %s: %w", msgs[i].subject, err)
		case <-ctx.Done():
			errs[i] = fmt.Errorf("publish %s: %w", msgs[i].subject, ctx.Err())
		}
	}
	return acks, errs
}

// released takes the held SCHEDULED o makes moot off the held ones, if o is
// an announcement and there is one.
func (p *Processor) released(o outMsg) *heldMsg {
	if o.announces == "" {
		return nil
	}
	return p.held.release(o.announces)
}

// publishAsync sends o, for publishEach to wait for its ack.
func (p *Processor) publishAsync(ctx context.Context, o outMsg) (jetstream.PubAckFuture, error) {
	nm := &nats.Msg{Subject: o.subject, Data: o.raw}
	var opts []jetstream.PublishOpt
	if o.expectNew {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(0))
	}
	if o.raw == nil {
		var err error
		if nm, err = bus.NewMsg(ctx, o.subject, o.m); err != nil {
			return nil, fmt.Errorf("publish %s: %w", o.subject, err)
		}
		for k, v := range o.header {
			nm.Header[k] = v
		}
	}
	if o.msgID != "" {
		opts = append(opts, jetstream.WithMsgID(o.msgID))
	}
	f, err := p.cfg.JS.PublishMsgAsync(nm, opts...)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", o.subject, err)
	}
	return f, nil
}

// createScheduled handles a new job in one record write when a service can
// take it now: the record is created SCHEDULED with its first execution,
// and the work item is published with it. SCHEDULED is announced only if the
// job is still there ScheduledDelay later (held.go). QUEUED is not
// announced: the job never waited, and the mediator takes NEW -> SCHEDULED,
// or NEW -> its end for a job done within the delay.
// It reports false (and no error) when it did nothing: no candidate now, or
// the record exists already (a redelivery), both handled by the general
// path. The create is the existence check: no read comes first.
//
// first says this is the job's first announcement, delivered for the first
// time: then its record cannot exist yet (only this message creates it), so
// the record and the work item go out together, one round trip
// from JobCreated to a worker (unless the job has a deadline). Otherwise the record is created first and the
// rest only once it is: a redelivery or a re-announcement may find the job
// handled long ago, and must not send its work again.
//
// kept acknowledges the JobCreated. A job dispatched with its SCHEDULED held
// is reported done with bus.ErrKept: its JobCreated is acknowledged once the
// held announcement is settled too (keptAck), so that a replica killed
// holding it leaves it to be delivered again, and the job announced then.
func (p *Processor) createScheduled(ctx context.Context, job *jobsv1.Job, first bool, kept *keptAck) (bool, error) {
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
	item := record.WorkItem(rec)
	if d := effectiveTimeout(rec, p.profile(ctx, rec.GetProfile())); d > 0 {
		item.Timeout = durationpb.New(d + p.cfg.TimeoutGrace)
	}
	// A failure after the record is stored is healed by redelivery: the
	// record is SCHEDULED, and advance publishes the same work item and
	// announcement again (the same msg ids: stored once).
	out := []outMsg{{subject: bus.SubjectWork(cand.Service, id), msgID: record.WorkMsgID(rec), m: item}}
	// SCHEDULED goes out with them only when it cannot be held back. It is
	// held before anything is sent: a worker's report may be announced as
	// soon as the record is stored, and must find it held to drop it. Should
	// the job not be dispatched here after all, it is let go, and the path
	// that dispatches it announces.
	dispatched, keep := false, error(nil)
	if scheduled := p.statusMsg(rec); p.held.hold(ctx, id, scheduled, p.cfg.Now(), kept.settle) {
		keep = bus.ErrKept
		defer func() {
			if dispatched {
				kept.dispatchDone()
			} else {
				p.held.drop(id)
			}
		}()
	} else {
		out = append(out, scheduled)
	}
	if rec.GetDeadline() != nil {
		out = append(out, p.deadlineTimer(rec))
	}
	create, data, err := p.store.createMsg(id, rec)
	if err != nil {
		return false, err
	}
	// A deadline's timer is not sent ahead of the record: a timer that
	// finds no record ends, and the deadline would go unwatched.
	if first && rec.GetDeadline() == nil {
		// A worker may report on the item before the record's write is
		// stored (the two streams store independently): HandleExecution
		// waits for a record that is young enough to be on its way.
		acks, err := p.publishAll(ctx, append([]outMsg{create}, out...)...)
		if len(acks) > 0 && acks[0] != nil {
			p.store.created(id, rec, data, acks[0].Sequence)
		}
		switch {
		case errors.Is(err, errKeyExists):
			// Not expected of a first announcement; whoever created the
			// record sent the same item (same msg id, stored once). The
			// general path goes on from the record.
			return false, nil
		case err != nil:
			return true, fmt.Errorf("dispatch job %s: %w", id, err)
		}
	} else {
		acks, err := p.publishAll(ctx, create)
		switch {
		case errors.Is(err, errKeyExists):
			return false, nil // a redelivery, or another delivery got there first
		case err != nil:
			return false, fmt.Errorf("create record of job %s: %w", id, err)
		}
		p.store.created(id, rec, data, acks[0].Sequence)
		if _, err := p.publishAll(ctx, out...); err != nil {
			return true, fmt.Errorf("dispatch job %s: %w", id, err)
		}
	}
	p.metrics.dispatched(ctx, rec.GetProfile(), cand.Service)
	slog.DebugContext(ctx, "job dispatched", "job_id", id, "attempt", 1, "service", cand.Service, "cost", cand.Cost, "load", cand.Load)
	dispatched = true
	return true, keep
}
