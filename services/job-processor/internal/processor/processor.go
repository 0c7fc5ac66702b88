// Package processor is the job-processor's core: it consumes JobCreated,
// ExecutionUpdate and JobCancelRequested events, keeps one record per job in
// the executions KV bucket (compare-and-set on the revision, so replicas and
// redeliveries are safe), dispatches work items to the chosen service and
// announces every change of a job as a JobStatusChanged event.
//
// Every handler is idempotent and re-announces a change it finds already
// applied: the announcement's msg id is deterministic, so a crash between the
// record update and the publish is healed by redelivery, exactly once.
package processor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/services/job-processor/internal/record"
	"github.com/medius-platform/medius/services/job-processor/internal/selection"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/durationpb"
)

// concurrency is how many messages of one consumer a replica handles at
// once: each is a few round trips to NATS and the registry, so handling them
// one by one would leave the process idle. The record logic is indifferent
// to the order of a job's messages (stale, duplicate and out-of-order reports
// are recognised), and compare-and-set settles two of a job's at once.
// Under load a round trip takes tens of milliseconds, so keeping up with a
// few thousand reports a second takes hundreds in flight; each is a parked
// goroutine, and the consumer's MaxAckPending bounds them across replicas.
const concurrency = 512

// firstMaxAge is how old a JobCreated may be and still take the fast path
// that sends the work item without waiting for the record's create (see
// createScheduled): one older is a replay or stuck behind a backlog, and
// past the duplicate window its item would not be dropped as a repeat. Its
// age is read on the processor's clock against the NATS server's: a clock
// ahead by more than this sends every job the slower way, one behind by
// more than the duplicate window less this leaves replays unguarded.
const firstMaxAge = time.Minute

// recordWait is how long a worker's report on a job without a record is
// kept for the record to arrive, retried every recordRetry.
const (
	recordWait  = 30 * time.Second
	recordRetry = 50 * time.Millisecond
)

// AckWait of the processor's consumers: the messages a killed replica held
// go to another after this long, so it bounds the recovery from a crash.
const AckWait = 10 * time.Second

// Durable consumers of the processor on bus.StreamEvents; replicas share them.
const (
	DurableCreated = "processor-created"
	DurableExec    = "processor-exec"
	DurableCancel  = "processor-cancel"
	DurableRestart = "processor-restart"
)

const instrumentation = "github.com/medius-platform/medius/services/job-processor"

var tracer = otel.Tracer(instrumentation)

// Selector chooses the service a job runs on; selection.ErrNoCandidate means
// none can now, any other error is transient.
type Selector interface {
	Select(ctx context.Context, req selection.Request) (selection.Candidate, error)
	// Candidates lists every service that can take req now, best first.
	Candidates(ctx context.Context, req selection.Request) ([]selection.Candidate, error)
}

// Config configures a Processor.
type Config struct {
	JS jetstream.JetStream
	// NC carries the core-NATS cancel requests to running workers.
	NC       *nats.Conn
	Selector Selector
	// QueueTimeout is how long a job may wait for a service offering its
	// profile before it fails (no-service), counted from when it was queued
	// this time (record.QueuedSince): its creation, its restart, or the end
	// of a retry's backoff.
	QueueTimeout time.Duration
	// CancelDeliveries is how often a cancel of a job without a record is
	// retried (its JobCreated may not have been handled yet) before it is
	// dropped (default 10).
	CancelDeliveries uint64
	// Profiles finds job profiles (default timeout, max attempts); nil
	// means no profile defaults.
	Profiles ProfileLookup
	// HeartbeatTimeout is how long a running attempt may stay silent before
	// its worker is taken for lost and the job retried (default 6s: three
	// missed heartbeats of a worker beating every 2s).
	HeartbeatTimeout time.Duration
	// RetryBackoff is the delay before the first retry of a lost attempt;
	// it doubles with each further loss in a row (default 1s).
	RetryBackoff time.Duration
	// TimerInterval is the longest a timer sleeps between two checks
	// (default 5s); heartbeat, timeout and deadline checks come earlier.
	TimerInterval time.Duration
	// TimerRenewAge is the age at which a timer message is replaced by a
	// fresh one, so that none reaches the events stream's MaxAge, which
	// deletes it (default DefaultTimerRenewAge; tests make it short).
	TimerRenewAge time.Duration
	// TimeoutGrace is added to the timeout a worker is handed, so the
	// processor's own timeout (job-timeout-passed) comes first and the
	// worker's is only the backstop when no processor runs (default 5s).
	TimeoutGrace time.Duration
	// ScheduledDelay is how long the SCHEDULED of a job dispatched at once
	// is held back: a job that ends sooner is never announced SCHEDULED
	// (see held.go). Default DefaultScheduledDelay; negative announces at
	// once.
	ScheduledDelay time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Processor handles the processor's events. Create it with New, run it with Run.
type Processor struct {
	cfg     Config
	store   *store
	events  jetstream.Stream
	work    jetstream.Stream
	metrics metrics
	held    *held
	ready   atomic.Bool
	// lastDown is when this process last saw NATS unreachable (unix ns),
	// from its start: workers' heartbeats cannot arrive meanwhile, so it
	// counts as a sign of life of every attempt.
	lastDown atomic.Int64
}

// New binds the executions bucket (bus.Provision must have created it).
func New(ctx context.Context, cfg Config) (*Processor, error) {
	if cfg.JS == nil || cfg.NC == nil || cfg.Selector == nil {
		return nil, errors.New("processor: JS, NC and Selector are required")
	}
	if cfg.QueueTimeout <= 0 {
		cfg.QueueTimeout = time.Minute
	}
	if cfg.CancelDeliveries == 0 {
		cfg.CancelDeliveries = 10
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HeartbeatTimeout <= 0 {
		cfg.HeartbeatTimeout = 6 * time.Second
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = time.Second
	}
	if cfg.TimerInterval <= 0 {
		cfg.TimerInterval = 5 * time.Second
	}
	if cfg.TimerRenewAge <= 0 {
		cfg.TimerRenewAge = DefaultTimerRenewAge
	}
	if cfg.TimeoutGrace <= 0 {
		cfg.TimeoutGrace = 5 * time.Second
	}
	if cfg.ScheduledDelay == 0 {
		cfg.ScheduledDelay = DefaultScheduledDelay
	}
	events, err := cfg.JS.Stream(ctx, bus.StreamEvents)
	if err != nil {
		return nil, fmt.Errorf("bind stream %s: %w", bus.StreamEvents, err)
	}
	work, err := cfg.JS.Stream(ctx, bus.StreamWork)
	if err != nil {
		return nil, fmt.Errorf("bind stream %s: %w", bus.StreamWork, err)
	}
	kv, err := cfg.JS.KeyValue(ctx, bus.BucketExecutions)
	if err != nil {
		return nil, fmt.Errorf("bind bucket %s: %w", bus.BucketExecutions, err)
	}
	m, err := newMetrics()
	if err != nil {
		return nil, err
	}
	p := &Processor{cfg: cfg, store: newStore(kv), events: events, work: work, metrics: m, held: newHeld(cfg.ScheduledDelay)}
	p.lastDown.Store(cfg.Now().UnixNano())
	return p, nil
}

// Ready reports whether the consumers are set up and consuming.
func (p *Processor) Ready() bool { return p.ready.Load() }

// Run consumes until ctx ends, then lets the messages in hand finish (each
// consumer drains) and returns. It returns early only if a consumer cannot be
// set up.
func (p *Processor) Run(ctx context.Context) error {
	consumers := []struct {
		cfg     bus.ConsumerConfig
		handler bus.Handler
	}{
		// A JobCreated is acknowledged once the job's held SCHEDULED is
		// settled (held.go): room for as many as are held, on top of those
		// in hand.
		{bus.ConsumerConfig{AckWait: AckWait, Concurrency: concurrency, Stream: bus.StreamEvents, Durable: DurableCreated, Filter: []string{bus.SubjectJobCreated},
			MaxAckPending: heldMax + 2*concurrency}, p.HandleCreated},
		{bus.ConsumerConfig{AckWait: AckWait, Concurrency: concurrency, Stream: bus.StreamEvents, Durable: DurableExec, Filter: []string{bus.SubjectExecutionAll}}, p.HandleExecution},
		{bus.ConsumerConfig{AckWait: AckWait, Concurrency: concurrency, Stream: bus.StreamEvents, Durable: DurableCancel, Filter: []string{bus.SubjectJobCancel}}, p.HandleCancel},
		{bus.ConsumerConfig{AckWait: AckWait, Concurrency: concurrency, Stream: bus.StreamEvents, Durable: DurableRestart, Filter: []string{bus.SubjectJobRestart}}, p.HandleRestart},
		{bus.ConsumerConfig{AckWait: AckWait, Concurrency: concurrency, Stream: bus.StreamEvents, Durable: DurableTimer, Filter: []string{subjectTimer + "*"}, MaxAckPending: timerMaxAckPending}, p.HandleTimer},
	}
	// Set every consumer up first, so Ready means all of them are there.
	for _, c := range consumers {
		if _, err := bus.EnsureConsumer(ctx, p.cfg.JS, c.cfg); err != nil {
			return err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, c := range consumers {
		g.Go(func() error { return bus.Consume(gctx, p.cfg.JS, c.cfg, c.handler) })
	}
	g.Go(func() error { p.watchConnection(gctx); return nil })
	g.Go(func() error { p.watchStranded(gctx); return nil })
	g.Go(func() error { p.announceHeld(gctx); return nil })
	p.ready.Store(true)
	defer p.ready.Store(false)
	err := g.Wait()
	// The consumers have drained: nothing is held after this.
	p.flushHeld(ctx)
	return err
}

// connectedAt is the last moment this process was cut off from NATS (or its
// start).
func (p *Processor) connectedAt() time.Time { return time.Unix(0, p.lastDown.Load()) }

// watchConnection notes when NATS is unreachable, until ctx ends.
func (p *Processor) watchConnection(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !p.cfg.NC.IsConnected() {
				p.lastDown.Store(p.cfg.Now().UnixNano())
			}
		}
	}
}

// HandleCreated takes a new job: record it QUEUED, then dispatch it. A
// redelivery continues from the record's state.
func (p *Processor) HandleCreated(ctx context.Context, msg jetstream.Msg) error {
	var ev eventsv1.JobCreated
	if err := bus.Decode(msg.Data(), &ev); err != nil {
		return err
	}
	job := ev.GetJob()
	if err := validID(job.GetId()); err != nil {
		return bus.Permanent(fmt.Errorf("job created: %w", err))
	}
	// The usual case, in few round trips: a service is there, so the record
	// is created already SCHEDULED, and the work item goes out with it
	// (SCHEDULED is held back: held.go). Only CreateJob's own announcement,
	// on its first delivery, may skip waiting for the record (see
	// createScheduled).
	reannounced := msg.Headers().Get(bus.HeaderReannounced) != ""
	redelivered, young := true, false
	if md, err := msg.Metadata(); err == nil {
		redelivered = md.NumDelivered > 1
		// A first delivery of an old announcement is a replay (its
		// consumer made anew): its record, and work, may be long out.
		young = p.cfg.Now().Sub(md.Timestamp) < firstMaxAge
	}
	kept := &keptAck{ack: func() {
		if err := msg.Ack(); err != nil {
			slog.WarnContext(ctx, "ack JobCreated", "job_id", job.GetId(), "err", err)
		}
	}}
	if done, err := p.createScheduled(ctx, job, !reannounced && !redelivered && young, kept); done || err != nil {
		return err
	}
	rec, outcome, err := p.store.update(ctx, job.GetId(), func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		if rec != nil {
			return rec, record.AlreadyApplied, nil
		}
		return record.New(job, p.cfg.Now()), record.Applied, nil
	})
	if err != nil {
		return fmt.Errorf("create record of job %s: %w", job.GetId(), err)
	}
	if reannounced && !redelivered && outcome == record.AlreadyApplied && len(rec.GetExecutions()) > 0 {
		// Another announcement of the job made the record and sent its
		// work; what moves the job on now is its worker's reports, its
		// timers, a restart. This one, perhaps stored long after (the
		// mediator's sweep, past the duplicate windows), only says where
		// the job is: sending its work again could run it twice. A record
		// with no execution yet has sent no work: it goes on below
		// (whoever made it, a dispatch is a compare-and-set).
		return p.announce(ctx, rec)
	}
	if rec.GetDeadline() != nil && !jobstate.IsTerminal(rec.GetStatus()) {
		if _, err := p.publishAll(ctx, p.deadlineTimer(rec)); err != nil {
			return fmt.Errorf("start the deadline timer of job %s: %w", rec.GetId(), err)
		}
	}
	return p.advance(ctx, rec)
}

// advance moves a job on from its record's state.
func (p *Processor) advance(ctx context.Context, rec *jobsv1.Job) error {
	switch st := rec.GetStatus(); {
	case st == jobsv1.JobStatus_JOB_STATUS_QUEUED:
		if err := p.announce(ctx, rec); err != nil {
			return err
		}
		return p.dispatch(ctx, rec)
	case st == jobsv1.JobStatus_JOB_STATUS_SCHEDULED:
		// Redelivered after a crash between scheduling and publishing, or
		// a replay: send the work item if it is neither queued nor taken.
		return p.ensureWork(ctx, rec)
	case jobstate.IsTerminal(st):
		return p.announce(ctx, rec)
	}
	return nil // RUNNING: the worker reports from here on.
}

// dispatch selects a service for a QUEUED job, records the execution and
// hands the work item to the service's queue.
func (p *Processor) dispatch(ctx context.Context, rec *jobsv1.Job) error {
	id := rec.GetId()
	sctx, span := tracer.Start(ctx, "select", trace.WithAttributes(attribute.String("medius.job_id", id), attribute.String("medius.profile", rec.GetProfile())))
	cand, err := p.cfg.Selector.Select(sctx, selection.Request{Profile: rec.GetProfile(), Region: rec.GetRegion()})
	endSpan(span, err)
	if errors.Is(err, selection.ErrNoCandidate) {
		left := p.queueLeft(rec)
		if left <= 0 {
			return p.failNoService(ctx, rec)
		}
		// Redelivered after a delay: a worker may register meanwhile. Look
		// again every second, and right at the queue timeout.
		return bus.RetryAfter(min(time.Second, left),
			fmt.Errorf("dispatch job %s: %w for profile %q (%s of %s left)", id, err, rec.GetProfile(), left.Round(time.Millisecond), p.cfg.QueueTimeout))
	}
	if err != nil {
		// The registry is unreachable: transient, never a reason to fail the job.
		return fmt.Errorf("dispatch job %s: %w", id, err)
	}

	return p.schedule(ctx, rec, cand)
}

// schedule records the execution on cand's service and sends its work item.
func (p *Processor) schedule(ctx context.Context, rec *jobsv1.Job, cand selection.Candidate) (err error) {
	id := rec.GetId()
	ctx, span := tracer.Start(ctx, "dispatch", trace.WithAttributes(attribute.String("medius.job_id", id), attribute.String("medius.service", cand.Service)))
	defer func() { endSpan(span, err) }()
	rec, outcome, err := p.store.update(ctx, id, func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		if rec == nil {
			return nil, record.Ignored, fmt.Errorf("record of job %s vanished", id)
		}
		return rec, record.Schedule(rec, cand.Service, p.cfg.Now()), nil
	})
	if err != nil {
		return fmt.Errorf("dispatch job %s: %w", id, err)
	}
	switch outcome {
	case record.Ignored:
		// Moved on meanwhile (canceled, or another replica got further).
		return nil
	case record.Applied:
		p.metrics.dispatched(ctx, rec.GetProfile(), cand.Service)
		slog.InfoContext(ctx, "job dispatched", "job_id", id, "attempt", jobstate.Current(rec).GetAttempt(),
			"service", cand.Service, "cost", cand.Cost, "load", cand.Load)
	}
	return p.sendWork(ctx, rec)
}

// sendWork publishes the work item of a SCHEDULED job's current execution,
// then announces SCHEDULED.
func (p *Processor) sendWork(ctx context.Context, rec *jobsv1.Job) error {
	cur := jobstate.Current(rec)
	item := record.WorkItem(rec)
	if d := effectiveTimeout(rec, p.profile(ctx, rec.GetProfile())); d > 0 {
		item.Timeout = durationpb.New(d + p.cfg.TimeoutGrace)
	}
	// Both in one round trip; should either fail, the redelivery sends both
	// again (each is stored once, by its msg id).
	if _, err := p.publishAll(ctx,
		outMsg{subject: bus.SubjectWork(cur.GetService(), rec.GetId()), msgID: record.WorkMsgID(rec), m: item},
		p.statusMsg(rec)); err != nil {
		return fmt.Errorf("dispatch job %s to %s: %w", rec.GetId(), cur.GetService(), err)
	}
	return nil
}

// queueLeft is how much longer rec, QUEUED, may wait for a service: the
// queue timeout counts from when it was queued this time (record.
// QueuedSince), not from create_time, or a job restarted, or retried, long
// after its creation would fail at once instead of waiting.
func (p *Processor) queueLeft(rec *jobsv1.Job) time.Duration {
	return p.cfg.QueueTimeout - p.cfg.Now().Sub(record.QueuedSince(rec, p.cfg.RetryBackoff))
}

// failNoService ends a job that waited the whole queue timeout for a service.
func (p *Processor) failNoService(ctx context.Context, rec *jobsv1.Job) error {
	id := rec.GetId()
	rec, outcome, err := p.store.update(ctx, id, func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		if rec == nil {
			return nil, record.Ignored, fmt.Errorf("record of job %s vanished", id)
		}
		if rec.GetStatus() != jobsv1.JobStatus_JOB_STATUS_QUEUED && !jobstate.IsTerminal(rec.GetStatus()) {
			// Dispatched meanwhile by another replica.
			return rec, record.Ignored, nil
		}
		if rec.GetStatus() == jobsv1.JobStatus_JOB_STATUS_QUEUED && p.queueLeft(rec) > 0 {
			// Queued again since the wait that was judged over (a view
			// of a retry's wait, stale or overtaken: the job ended and
			// was restarted): the new run's wait is its own, and its
			// restart message dispatches it.
			return rec, record.Ignored, nil
		}
		return rec, record.Fail(rec, record.NoService(rec.GetProfile()), p.cfg.Now()), nil
	})
	if err != nil {
		return fmt.Errorf("fail job %s: %w", id, err)
	}
	if outcome == record.Ignored {
		return nil
	}
	if outcome == record.Applied {
		p.metrics.failed(ctx, rec)
		slog.WarnContext(ctx, "job failed: no service", "job_id", id, "profile", rec.GetProfile())
	}
	return p.announce(ctx, rec)
}

// HandleExecution applies a worker's report on one attempt of a job.
func (p *Processor) HandleExecution(ctx context.Context, msg jetstream.Msg) error {
	var u eventsv1.ExecutionUpdate
	if err := bus.Decode(msg.Data(), &u); err != nil {
		return err
	}
	id := u.GetJobId()
	if err := validID(id); err != nil {
		return bus.Permanent(fmt.Errorf("execution update: %w", err))
	}
	// news: the report changed the job, or may have (the record already
	// said so: a redelivery, perhaps after a crash before the announcement).
	// Not so a heartbeat that only confirms what the record says. started:
	// the report started the attempt. tookStart: the report only told when
	// and where an attempt the processor had ended already ran (see
	// record.TakeStart); what follows goes by applied, Apply's own outcome.
	var news, started, tookStart bool
	var applied record.Outcome
	rec, outcome, err := p.store.update(ctx, id, func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		tookStart = false
		if rec == nil {
			applied = record.Ignored
			return nil, record.Ignored, nil
		}
		before := rec.GetStatus()
		applied = record.Apply(rec, &u, p.cfg.Now())
		news = applied == record.Applied || u.GetMessage() != record.HeartbeatMessage
		started = applied == record.Applied && before != jobsv1.JobStatus_JOB_STATUS_RUNNING
		if applied == record.AlreadyApplied {
			// A heartbeat: keep the record's sign of life fresh (a few
			// writes per heartbeat timeout, no more).
			if record.Beat(rec, &u, p.cfg.Now(), p.cfg.HeartbeatTimeout/4) == record.Applied {
				return rec, record.Applied, nil
			}
		}
		if applied != record.Applied && record.TakeStart(rec, &u) == record.Applied {
			tookStart = true
			return rec, record.Applied, nil // written, not counted again
		}
		return rec, applied, nil
	})
	if err != nil {
		return fmt.Errorf("apply %s of job %s attempt %d: %w", jobstate.Name(u.GetStatus()), id, u.GetAttempt(), err)
	}
	if tookStart {
		// Its end was counted without a run time: measure it now.
		p.metrics.ran(ctx, rec)
		outcome = applied
	}
	// The mediator's record of the ended job has the execution as its end
	// was announced, without the start: tell it (see announceStart). A
	// redelivered report may have given the start before that announcement
	// failed, or its process died: it tells again (so does the redelivered
	// report of a job canceled while RUNNING, which looks the same: one
	// message more, on a redelivery only).
	// A job ended by its worker's report never gets here, so nor does one
	// that is not canceled or expired.
	startNews := tookStart
	if !startNews && rec != nil && outcome != record.Applied && record.StartTakenFrom(rec, &u) {
		md, err := msg.Metadata()
		startNews = err == nil && md.NumDelivered > 1
	}
	log := slog.With("job_id", id, "attempt", u.GetAttempt(), "status", jobstate.Name(u.GetStatus()), "progress", u.GetProgress())
	switch {
	case rec == nil:
		// Work items only come from records, but a job's first work item is
		// published with its record (createScheduled), and the two streams
		// store them independently: a quick worker's report may come first.
		// Wait for a record on its way; past recordWait the report is not
		// ours to track.
		if md, err := msg.Metadata(); err == nil && p.cfg.Now().Sub(md.Timestamp) < recordWait {
			return bus.RetryAfter(recordRetry, fmt.Errorf("execution update of job %s: no record yet", id))
		}
		log.WarnContext(ctx, "execution update for a job without a record dropped")
		return nil
	case outcome == record.Ignored:
		log.DebugContext(ctx, "execution update ignored", "record_status", jobstate.Name(rec.GetStatus()), "current_attempt", jobstate.Current(rec).GetAttempt())
		if jobstate.IsTerminal(rec.GetStatus()) && rec.GetStatus() != jobsv1.JobStatus_JOB_STATUS_COMPLETED &&
			u.GetStatus() == jobsv1.JobStatus_JOB_STATUS_RUNNING && u.GetAttempt() == jobstate.Current(rec).GetAttempt() {
			// Canceled or expired before the worker took it (the first stop
			// request had no one to hear it): tell the worker now.
			if err := p.stopWorker(ctx, rec); err != nil {
				return err
			}
		}
		if startNews {
			return p.announceStart(ctx, rec)
		}
		if u.GetAttempt() < jobstate.Current(rec).GetAttempt() {
			return p.staleAttempt(ctx, rec, &u)
		}
		return nil
	case outcome == record.Applied:
		switch rec.GetStatus() {
		case jobsv1.JobStatus_JOB_STATUS_COMPLETED:
			p.metrics.completed(ctx, rec)
		case jobsv1.JobStatus_JOB_STATUS_FAILED:
			p.metrics.failed(ctx, rec)
		case jobsv1.JobStatus_JOB_STATUS_CANCELED:
			p.metrics.canceled(ctx, rec)
		}
		if jobstate.IsTerminal(rec.GetStatus()) {
			log.InfoContext(ctx, "job ended", "instance_id", jobstate.Current(rec).GetInstanceId())
		}
	}
	if startNews {
		// In place of the announcement of the end again, which the stream
		// would drop as a duplicate: this one carries the end too.
		return p.announceStart(ctx, rec)
	}
	if !news {
		// The report that made the job what the heartbeat confirms did the
		// announcing and started the timer, or, if that failed, is
		// redelivered to do it: nothing to repeat on every heartbeat.
		return nil
	}
	if rec.GetStatus() == jobsv1.JobStatus_JOB_STATUS_RUNNING && u.GetStatus() == jobsv1.JobStatus_JOB_STATUS_RUNNING &&
		(started || outcome == record.AlreadyApplied) {
		// Watch the attempt from its start (or again, for a redelivery: the
		// msg id makes the repeat a no-op), and announce, in one round
		// trip. A mere progress report does not start another timer: past
		// the duplicate window a repeat would be a second one.
		_, err := p.publishAll(ctx, p.attemptTimer(ctx, rec),
			p.statusMsg(rec))
		return err
	}
	return p.announce(ctx, rec)
}

// errUnknownJob: a cancel for a job without a record (yet).
var errUnknownJob = errors.New("no record of job")

// errRestartPending: a cancel of a restarted run whose restart this
// processor has not applied yet.
var errRestartPending = errors.New("restart not applied yet")

// errCancelSuperseded: a cancel of a run that has since been restarted.
var errCancelSuperseded = errors.New("run restarted since")

// A cancel naming a restart the record does not have yet is tried again
// every cancelRetry, for up to cancelWait from its publication: the
// restart is usually applied within milliseconds, and at worst announced
// again by the mediator's restart check (10 s after it was asked for).
const (
	cancelRetry = 200 * time.Millisecond
	cancelWait  = time.Minute
)

// HandleCancel cancels a job at its tenant's request.
//
// Cancels and restarts reach the processor on two consumers, in no order
// between them, and the mediator accepts a cancel as soon as its record
// says a restart is queued. So a cancel may come before the restart it
// follows, and find the job still ended from its run before: cancelling
// it would do nothing, and the restart would then run the job the client
// was told is canceled. The cancel names the executions the mediator knew
// (JobCancelRequested.attempts); while the record is ended with fewer, it
// waits for the restart (for up to cancelWait), then cancels the new run.
// A record still running is canceled at once whatever it names: something
// runs, and it is what the client wants stopped.
func (p *Processor) HandleCancel(ctx context.Context, msg jetstream.Msg) error {
	var ev eventsv1.JobCancelRequested
	if err := bus.Decode(msg.Data(), &ev); err != nil {
		return err
	}
	id := ev.GetJobId()
	if err := validID(id); err != nil {
		return bus.Permanent(fmt.Errorf("cancel: %w", err))
	}
	rec, outcome, err := p.store.update(ctx, id, func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		if rec == nil {
			return nil, record.Ignored, errUnknownJob
		}
		if rec.GetTenant() != ev.GetTenant() {
			return rec, record.Ignored, bus.Permanent(fmt.Errorf("tenant %q does not own it", ev.GetTenant()))
		}
		if jobstate.IsTerminal(rec.GetStatus()) && int32(len(rec.GetExecutions())) < ev.GetAttempts() {
			return rec, record.Ignored, errRestartPending
		}
		if record.RestartedAfter(rec, &ev) {
			return rec, record.Ignored, errCancelSuperseded
		}
		return rec, record.Cancel(rec, p.cfg.Now()), nil
	})
	if errors.Is(err, errCancelSuperseded) {
		// A late redelivery (a replica died before acking it) of a cancel
		// whose run ended, then was restarted: the restart is newer news.
		slog.InfoContext(ctx, "cancel of a run since restarted ignored", "job_id", id,
			"attempts", ev.GetAttempts(), "executions", len(rec.GetExecutions()))
		return nil
	}
	if errors.Is(err, errRestartPending) {
		md, merr := msg.Metadata()
		if merr == nil && p.cfg.Now().Sub(md.Timestamp) >= cancelWait {
			slog.WarnContext(ctx, "cancel of a restart never applied dropped", "job_id", id,
				"attempts", ev.GetAttempts(), "executions", len(rec.GetExecutions()), "status", jobstate.Name(rec.GetStatus()))
			return nil
		}
		return bus.RetryAfter(cancelRetry, fmt.Errorf("cancel job %s (attempt %d): %w", id, ev.GetAttempts(), err))
	}
	if errors.Is(err, errUnknownJob) {
		// Its JobCreated may still be on its way: retry a few times.
		if md, merr := msg.Metadata(); merr == nil && md.NumDelivered >= p.cfg.CancelDeliveries {
			slog.WarnContext(ctx, "cancel of an unknown job dropped", "job_id", id, "deliveries", md.NumDelivered)
			return nil
		}
		return fmt.Errorf("cancel job %s: %w", id, err)
	}
	if err != nil {
		return fmt.Errorf("cancel job %s: %w", id, err)
	}
	if outcome == record.Ignored {
		return nil // already ended
	}
	if outcome == record.Applied {
		p.metrics.canceled(ctx, rec)
		slog.InfoContext(ctx, "job canceled", "job_id", id)
	}
	if err := p.withdrawEnded(ctx, rec); err != nil {
		return err
	}
	if err := p.stopWorker(ctx, rec); err != nil {
		return err
	}
	return p.announce(ctx, rec)
}

// stopWorker tells the worker running rec's current execution to stop. Core
// NATS: a worker that is not listening (not started yet, or gone) needs no
// telling, and one that misses it is told again when it reports RUNNING.
func (p *Processor) stopWorker(ctx context.Context, rec *jobsv1.Job) error {
	if jobstate.Current(rec) == nil {
		return nil
	}
	req := &eventsv1.JobCancelRequested{JobId: rec.GetId(), Tenant: rec.GetTenant()}
	if err := bus.PublishCore(ctx, p.cfg.NC, bus.SubjectCancel(rec.GetId()), req); err != nil {
		return fmt.Errorf("stop worker of job %s: %w", rec.GetId(), err)
	}
	return nil
}

// staleAttempt handles news of an attempt of rec before its current one,
// which the processor has ended (its worker declared lost, its item moved to
// another service, its run canceled or restarted) while a worker still runs
// it: one cut off from NATS for longer than the heartbeat window, or one
// that took a stale item. A running one is told to stop that attempt, and
// only it (the current one may run on the same worker): two runs of a job
// at once waste a slot and may write the same output. And its news means
// the item was taken: if rec's current attempt waits SCHEDULED without its
// item (a move whose send failed, then the old service came back and took
// the stale one), the item goes now, else the job would wait for good.
func (p *Processor) staleAttempt(ctx context.Context, rec *jobsv1.Job, u *eventsv1.ExecutionUpdate) error {
	if u.GetStatus() == jobsv1.JobStatus_JOB_STATUS_RUNNING {
		slog.InfoContext(ctx, "stopping a run of an attempt that is over", "job_id", rec.GetId(), "attempt", u.GetAttempt(),
			"instance_id", u.GetInstanceId(), "current_attempt", jobstate.Current(rec).GetAttempt())
		req := &eventsv1.JobCancelRequested{JobId: rec.GetId(), Tenant: rec.GetTenant(), Attempts: u.GetAttempt(), AttemptsKnown: true}
		if err := bus.PublishCore(ctx, p.cfg.NC, bus.SubjectStopAttempt(rec.GetId()), req); err != nil {
			return fmt.Errorf("stop attempt %d of job %s: %w", u.GetAttempt(), rec.GetId(), err)
		}
	}
	return p.ensureWork(ctx, rec)
}

// withdrawWork removes job id's work item from service's queue, whether it
// waits there or a worker holds it unacknowledged: a redelivery would run an
// attempt that is over. Removing an item that is gone does nothing.
func (p *Processor) withdrawWork(ctx context.Context, service, id string) error {
	if service == "" {
		return nil
	}
	if err := p.work.Purge(ctx, jetstream.WithPurgeSubject(bus.SubjectWork(service, id))); err != nil {
		return fmt.Errorf("withdraw work item of job %s from %s: %w", id, service, err)
	}
	return nil
}

// withdrawEnded withdraws, now that rec has ended, the work item of its
// current execution if no worker started it, so that none does now. A
// started one is left to its worker, which is told to stop and acks it;
// unless that execution lost its worker and the job ended while waiting
// for its retry (withdrawLost).
func (p *Processor) withdrawEnded(ctx context.Context, rec *jobsv1.Job) error {
	cur := jobstate.Current(rec)
	switch {
	case cur == nil:
		return nil
	case cur.GetStartTime() == nil:
		return p.withdrawWork(ctx, cur.GetService(), rec.GetId())
	}
	return p.withdrawLost(ctx, rec, cur.GetAttempt())
}

// withdrawLost withdraws the work item of rec's attempt if that attempt
// lost its worker (its item is bounded by the attempt: see
// withdrawAttempt). The loss withdrew it already, unless that purge
// failed (it is only logged: the retry's dispatch does it again); but a
// job that ends while waiting for the retry, or whose attempts the loss
// used up, dispatches none, and the dead worker's item would go to another
// worker after its ack wait, to run an attempt of a job that is over. So
// the end of the wait withdraws it too (the worker's RUNNING report would
// get it stopped, but only after it started), and so does a restart,
// after which that attempt is an old one: its worker's reports are
// ignored, and it cannot be told to stop without stopping the restarted
// run (a stop names the job only). Jobs that never lost a worker pay
// nothing.
func (p *Processor) withdrawLost(ctx context.Context, rec *jobsv1.Job, attempt int32) error {
	if attempt < 1 || int(attempt) > len(rec.GetExecutions()) {
		return nil
	}
	ex := rec.GetExecutions()[attempt-1]
	if ex.GetError().GetType() != record.ProblemWorkerLost {
		return nil
	}
	return p.withdrawAttempt(ctx, ex.GetService(), rec.GetId(), attempt)
}

// announce publishes rec's current state to the mediator.
func (p *Processor) announce(ctx context.Context, rec *jobsv1.Job) error {
	if _, err := p.publishAll(ctx, p.statusMsg(rec)); err != nil {
		return fmt.Errorf("announce job %s %s: %w", rec.GetId(), jobstate.Name(rec.GetStatus()), err)
	}
	return nil
}

// announceStart announces rec's end again, now that its execution shows
// the start (and instance) a worker's report gave it after the end
// (record.TakeStart). The announcement of the end went out without them,
// and the mediator applies an end once: it takes from this one, under an
// id of its own (record.StartMsgID), the start its ended execution lacks,
// and nothing else. One with no end yet takes it from this one whole.
func (p *Processor) announceStart(ctx context.Context, rec *jobsv1.Job) error {
	m := p.statusMsg(rec)
	m.msgID = record.StartMsgID(rec)
	if _, err := p.publishAll(ctx, m); err != nil {
		return fmt.Errorf("announce the start of job %s's ended attempt %d: %w", rec.GetId(), jobstate.Current(rec).GetAttempt(), err)
	}
	return nil
}

// statusMsg is the announcement of rec's current state, for publishAll.
func (p *Processor) statusMsg(rec *jobsv1.Job) outMsg {
	return outMsg{subject: bus.SubjectJobStatus(rec.GetId()), msgID: record.StatusMsgID(rec), m: jobstate.StatusEvent(rec), announces: rec.GetId()}
}

// validID refuses ids that cannot be a KV key and a subject token.
func validID(id string) error {
	if id == "" {
		return errors.New("no job id")
	}
	if strings.ContainsAny(id, ".*> \t\r\n/") {
		return fmt.Errorf("job id %q is not a valid subject token", id)
	}
	return nil
}

func endSpan(span trace.Span, err error) {
	if err != nil && !errors.Is(err, selection.ErrNoCandidate) {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
