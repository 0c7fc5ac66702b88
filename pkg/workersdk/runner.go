package workersdk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Config configures a Runner. Zero durations take the defaults noted.
type Config struct {
	JS jetstream.JetStream
	// NC receives cancel requests (core NATS).
	NC *nats.Conn
	// Service is the service name: the work subject and consumer derive from it.
	Service    string
	InstanceID string
	// Capacity is the number of jobs run at once (default 1).
	Capacity int
	Profiles []Profile
	// AckWait is the consumer's ack wait (30s): a work item held that long
	// without a sign of life goes to another instance. The runner signals
	// progress every AckWait/3.
	AckWait time.Duration
	// FetchWait bounds one wait for work (2s); it is also how long stopping
	// intake can take.
	FetchWait time.Duration
	// DrainTimeout is how long running jobs may go on after Run's context
	// ends before they are stopped and handed back (30s).
	DrainTimeout time.Duration
	// ProgressInterval is the least time between two progress updates (1s).
	ProgressInterval time.Duration
	// HeartbeatInterval is the period of the RUNNING "heartbeat" update sent
	// while a job runs (2s), by which the processor tells a live worker from
	// a lost one.
	HeartbeatInterval time.Duration
	// RunningDelay is how long a job runs before it is reported RUNNING
	// (100ms; negative: at once). A job that ends sooner is reported once,
	// by its terminal update, which carries its start time: RUNNING would
	// cost the platform four stored messages (the report, the processor's
	// record write, its timer and its announcement) for a state nobody
	// could see for long. Until then the work item's ack wait is what
	// notices a worker gone, as it is between taking an item and storing
	// RUNNING anyway. It must be below AckWait/3, when the item's ack
	// deadline is first extended. An item delivered again is reported
	// RUNNING at once: its first holder may have died within the delay.
	RunningDelay time.Duration
	Logger       *slog.Logger
}

// Runner takes work items and runs them; see the package doc.
type Runner struct {
	cfg      Config
	profiles map[string]Handler
	log      *slog.Logger
	tracer   trace.Tracer
	inFlight atomic.Int32

	// stops holds how to stop each running job, by job id, for the
	// runner's one cancel and one stop subscription.
	stopsMu sync.Mutex
	stops   map[string][]*stopper
}

// stopper stops a run of a job: its attempt's.
type stopper struct {
	attempt int32
	stop    func()
}

// Causes of a job context's end.
var (
	errCancelRequested = errors.New("job canceled by request")
	errTimeout         = errors.New("job timed out")
	errShutdown        = errors.New("worker shutting down")
)

// New checks cfg and applies defaults.
func New(cfg Config) (*Runner, error) {
	switch {
	case cfg.JS == nil || cfg.NC == nil:
		return nil, errors.New("worker: nats connection and jetstream required")
	case cfg.Service == "":
		return nil, errors.New("worker: service name required")
	case cfg.InstanceID == "":
		return nil, errors.New("worker: instance id required")
	}
	if cfg.Capacity <= 0 {
		cfg.Capacity = 1
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.FetchWait <= 0 {
		cfg.FetchWait = 2 * time.Second
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = time.Second
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 2 * time.Second
	}
	switch {
	case cfg.RunningDelay == 0:
		cfg.RunningDelay = 100 * time.Millisecond
	case cfg.RunningDelay < 0:
		cfg.RunningDelay = 0
	}
	if cfg.RunningDelay >= cfg.AckWait/3 {
		return nil, fmt.Errorf("worker: running delay %v must be below a third of the ack wait %v", cfg.RunningDelay, cfg.AckWait)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Runner{
		cfg:      cfg,
		profiles: map[string]Handler{},
		log:      cfg.Logger.With("instance", cfg.InstanceID),
		tracer:   otel.Tracer("github.com/medius-platform/medius/pkg/workersdk"),
	}
	for _, p := range cfg.Profiles {
		name := p.Spec.GetName()
		if name == "" || p.Handler == nil {
			return nil, fmt.Errorf("worker: profile %q needs a name and a handler", name)
		}
		if _, dup := r.profiles[name]; dup {
			return nil, fmt.Errorf("worker: profile %q given twice", name)
		}
		r.profiles[name] = p.Handler
	}
	return r, nil
}

// InFlight is the number of jobs running now (the load reported to the registry).
func (r *Runner) InFlight() int32 { return r.inFlight.Load() }

// ConsumerName is the durable consumer shared by all instances of service.
func ConsumerName(service string) string { return "worker-" + service }

// Run takes and runs work until ctx ends, then stops taking work, lets running
// jobs finish for up to DrainTimeout, stops and hands back (naks) the rest,
// and returns once every job goroutine has ended.
func (r *Runner) Run(ctx context.Context) error {
	cons, err := bus.EnsureConsumer(ctx, r.cfg.JS, bus.ConsumerConfig{
		Stream:  bus.StreamWork,
		Durable: ConsumerName(r.cfg.Service),
		Filter:  []string{bus.WorkQueue(r.cfg.Service)},
		AckWait: r.cfg.AckWait,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("work consumer: %w", err)
	}
	// One subscription hears every cancel, before any work is taken: a
	// subscription per job would cost each job a round trip to NATS.
	cancels, err := r.cfg.NC.Subscribe(bus.SubjectCancel("*"), r.onCancel)
	if err != nil {
		return fmt.Errorf("listen for cancels: %w", err)
	}
	defer func() { _ = cancels.Unsubscribe() }()
	stops, err := r.cfg.NC.Subscribe(bus.SubjectStopAttempt("*"), r.onStopAttempt)
	if err != nil {
		return fmt.Errorf("listen for stops: %w", err)
	}
	defer func() { _ = stops.Unsubscribe() }()
	if err := r.cfg.NC.FlushTimeout(5 * time.Second); err != nil {
		return fmt.Errorf("listen for cancels and stops: %w", err)
	}
	r.log.InfoContext(ctx, "taking work", "subject", bus.WorkQueue(r.cfg.Service), "capacity", r.cfg.Capacity)

	// Jobs run under jobsCtx, not ctx: the end of ctx only stops intake;
	// jobs are stopped DrainTimeout later.
	jobsCtx, stopJobs := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopJobs(nil)

	var intake errgroup.Group
	intake.Go(func() error {
		r.take(ctx, jobsCtx, cons)
		return nil
	})
	slotsDone := make(chan struct{})
	var g errgroup.Group
	g.Go(func() error {
		defer close(slotsDone)
		return intake.Wait()
	})
	g.Go(func() error {
		select {
		case <-slotsDone:
			return nil
		case <-ctx.Done():
		}
		if n := r.InFlight(); n > 0 {
			r.log.InfoContext(ctx, "draining running jobs", "in_flight", n, "timeout", r.cfg.DrainTimeout)
		}
		t := time.NewTimer(r.cfg.DrainTimeout)
		defer t.Stop()
		select {
		case <-slotsDone:
		case <-t.C:
			r.log.WarnContext(ctx, "drain timeout: stopping running jobs and handing them back", "in_flight", r.InFlight())
			stopJobs(errShutdown)
		}
		return nil
	})
	return g.Wait()
}

// take asks for work items only for free capacity, hands each to a free
// slot and returns once intake has stopped (ctx ended) and every job it
// started has ended.
//
// One pull at a time asks for as many items as there are free slots: a
// waiting pull gets a new item the moment it is queued, and a busy worker
// asks NATS once per batch instead of once per item. A worker never holds an
// item it has no free slot for: that item would wait behind a long job while
// another instance is idle. Slots freed while a pull waits are asked for by
// the next pull; the waiting one still has room for what arrives meanwhile.
func (r *Runner) take(ctx, jobsCtx context.Context, cons jetstream.Consumer) {
	// free holds a token per free slot; a slot gives its token back when
	// its job has ended.
	free := make(chan struct{}, r.cfg.Capacity)
	work := make(chan jetstream.Msg)
	var slots sync.WaitGroup
	defer slots.Wait()
	defer close(work)
	for range r.cfg.Capacity {
		free <- struct{}{}
		slots.Go(func() { r.slot(jobsCtx, work, free) })
	}
	for {
		n := 0
		select {
		case <-free:
			n = 1
		case <-ctx.Done():
			return
		}
	more:
		for n < r.cfg.Capacity {
			select {
			case <-free:
				n++
			default:
				break more
			}
		}
		// FetchMaxWait rather than a context: a pull cut short could lose a
		// message already on its way to us until its ack wait expires. So
		// the pull runs to its end, and what it brings after ctx has ended
		// is handed back (see handBack).
		pullEnd := time.Now().Add(r.cfg.FetchWait)
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(r.cfg.FetchWait))
		got, taken := 0, 0
		if err == nil {
			for msg := range batch.Messages() {
				got++
				if ctx.Err() != nil {
					r.handBack(ctx, msg, got < n, pullEnd)
					continue
				}
				work <- msg // a slot is free: we hold its token
				taken++
			}
			err = batch.Error()
		}
		for range n - taken {
			free <- struct{}{}
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			r.log.DebugContext(ctx, "fetch work", "err", err)
			sleep(ctx, r.cfg.FetchWait/4)
		}
	}
}

// handBackMargin is how much longer than the rest of its pull a stopping
// runner has the server keep an item it hands back: the pull expires on the
// server, which started counting when the request reached it, a trip after
// the runner did.
const handBackMargin = 100 * time.Millisecond

// handBack returns an item a stopping runner's pull brought. While that pull
// still has room, a plain nak makes the item available at once and the
// server may deliver it straight back into that pull (it serves waiting
// pulls in turn; alone, that pull gets it every time), to be naked again,
// round and round until the pull is full or ends. So the server is told to
// keep it until the pull has ended; then it goes to the next instance that
// asks. (Were the margin too short, it would come back once more and be kept
// another margin.) Once the pull is full it cannot come back: nak at once.
// Either way the server holds it, not this process, which may exit.
func (r *Runner) handBack(ctx context.Context, msg jetstream.Msg, open bool, pullEnd time.Time) {
	var err error
	if open {
		err = msg.NakWithDelay(max(time.Until(pullEnd), 0) + handBackMargin)
	} else {
		err = msg.Nak()
	}
	if err != nil {
		r.log.WarnContext(ctx, "hand back an item taken while stopping; it returns after its ack wait", "subject", msg.Subject(), "err", err)
	}
}

// slot is one unit of capacity: it runs the items handed to it one after
// the other. Its companion goroutine reports RUNNING, if the job runs past
// RunningDelay, and then the heartbeats of each job. Both live as long as the slot, rather than being
// started for each job: a new goroutine's stack grows again on every job,
// which costs a busy worker a few percent of its CPU.
func (r *Runner) slot(jobsCtx context.Context, work <-chan jetstream.Msg, free chan<- struct{}) {
	runs := make(chan *run)
	var companion sync.WaitGroup
	defer companion.Wait()
	defer close(runs)
	companion.Go(func() {
		// One timer for the slot's life rather than one per job.
		delay := time.NewTimer(time.Hour)
		delay.Stop()
		for j := range runs {
			r.announce(j, delay)
		}
	})
	for msg := range work {
		r.process(jobsCtx, msg, runs)
		free <- struct{}{}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// process runs one work item to its end and settles its message: acked after
// the terminal update is published, naked when handed back, terminated when
// it can never be run.
func (r *Runner) process(jobsCtx context.Context, msg jetstream.Msg, runs chan<- *run) {
	r.inFlight.Add(1)
	defer r.inFlight.Add(-1)

	ctx := bus.ContextFromHeader(jobsCtx, msg.Headers())
	item := &eventsv1.WorkItem{}
	if err := bus.Decode(msg.Data(), item); err != nil || item.GetJobId() == "" {
		r.log.ErrorContext(ctx, "dropping undecodable work item", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	ctx, span := r.tracer.Start(ctx, "execute "+item.GetProfile(), trace.WithAttributes(
		attribute.String("medius.job_id", item.GetJobId()),
		attribute.Int("medius.attempt", int(item.GetAttempt())),
		attribute.String("medius.profile", item.GetProfile()),
		attribute.String("medius.instance_id", r.cfg.InstanceID),
	))
	defer span.End()
	log := r.log.With("job", item.GetJobId(), "attempt", item.GetAttempt(), "profile", item.GetProfile())
	if md, err := msg.Metadata(); err == nil && md.NumDelivered > 1 {
		log.InfoContext(ctx, "work item redelivered", "deliveries", md.NumDelivered)
	}

	final := r.execute(ctx, log, item, msg, runs)
	if final == nil { // handed back
		span.SetStatus(codes.Error, "handed back")
		if err := msg.Nak(); err != nil {
			log.WarnContext(ctx, "nak failed; the item returns after its ack wait", "err", err)
		}
		return
	}
	if final.GetStatus() == jobsv1.JobStatus_JOB_STATUS_FAILED {
		span.SetStatus(codes.Error, final.GetError().GetDetail())
	}
	// The terminal update must outlive a drain timeout: publishing it is what
	// makes the work done. It also waits out a NATS restart (publishes are
	// not buffered while the client reconnects), which is cheaper than
	// running the job again once the item returns.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), terminalPublishWait)
	defer cancel()
	if err := r.publish(pctx, final, ""); err != nil {
		log.ErrorContext(ctx, "cannot report the result; handing the item back", "status", jobstate.Name(final.GetStatus()), "err", err)
		_ = msg.Nak()
		return
	}
	// A plain ack, not DoubleAck: the terminal update is stored, so the
	// server's confirmation would change nothing (a lost ack redelivers the
	// item after its ack wait; it is run again and its duplicate result
	// ignored by the processor, confirmed or not) and would cost the slot a
	// round trip and the server a reply per job. It fails only when the
	// connection cannot take it (closed, or lost again since the publish).
	if err := msg.Ack(); err != nil {
		log.WarnContext(ctx, "ack failed; the item returns after its ack wait and its result is ignored", "err", err)
	}
	log.InfoContext(ctx, "job finished", "status", jobstate.Name(final.GetStatus()), "verified_quantity", final.GetVerifiedQuantity())
}

// execute runs item's handler and returns the terminal update to publish, or
// nil to hand the item back to another instance. runs is the slot's
// companion, idle while the slot has no job.
func (r *Runner) execute(ctx context.Context, log *slog.Logger, item *eventsv1.WorkItem, msg jetstream.Msg, runs chan<- *run) *eventsv1.ExecutionUpdate {
	handler, ok := r.profiles[item.GetProfile()]
	if !ok {
		upd := r.update(item, jobsv1.JobStatus_JOB_STATUS_FAILED)
		upd.Error = (&problem.Error{Code: grpccodes.Unimplemented, Type: TypeUnsupportedProfile, Title: "Unsupported profile",
			Detail: fmt.Sprintf("service %s does not run profile %q", r.cfg.Service, item.GetProfile()), Field: "profile"}).Problem()
		return upd
	}

	jobCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if d := item.GetTimeout().AsDuration(); d > 0 {
		var stop context.CancelFunc
		jobCtx, stop = context.WithTimeoutCause(jobCtx, d, errTimeout)
		defer stop()
	}
	// Listen for cancel before announcing RUNNING: the processor may send a
	// cancel as soon as it sees it.
	defer r.onStop(item.GetJobId(), item.GetAttempt(), func() {
		log.InfoContext(ctx, "cancel requested")
		cancel(errCancelRequested)
	})()

	// The handler starts while the companion waits out RunningDelay and
	// then stores RUNNING. RUNNING, when sent, still comes first in the
	// stream: progress and heartbeats follow it, and the terminal update
	// waits for it. Storing it only fails once ctx has ended (shutdown past
	// the drain timeout), which stops the handler too; the item is then
	// handed back, as when RUNNING failed before the handler started.
	var progress atomic.Int32
	progress.Store(-1)
	hbCtx, stopHB := context.WithCancel(jobCtx)
	j := &run{ctx: ctx, hbCtx: hbCtx, log: log, item: item, msg: msg, progress: &progress, start: time.Now(),
		ended: make(chan struct{}), announced: make(chan error, 1), done: make(chan struct{})}
	// An item delivered again is reported RUNNING at once, without the
	// delay: its earlier holder may have died within it (a job that kills
	// its worker, an OOM), unseen by the processor, which counts a lost
	// worker against the job's attempt limit only once RUNNING is stored.
	// Were every delivery to wait, such a job would go from worker to
	// worker, an ack wait apart, for ever; this way each attempt costs at
	// most two of them before it is counted lost. (A stopping worker's
	// hand-back looks the same, and costs the report only.)
	if md, err := msg.Metadata(); err == nil && md.NumDelivered > 1 {
		j.redelivered = true
	}
	runs <- j

	out, qty, herr := r.runHandler(handlerContext(jobCtx, item), handler, item, func(p int) { progress.Store(int32(min(max(p, 0), 100))) })
	close(j.ended)
	aerr := <-j.announced
	stopHB()
	<-j.done
	if aerr != nil {
		log.WarnContext(ctx, "cannot report RUNNING; handing the item back", "err", aerr)
		return nil
	}
	// Every terminal update of a job that ran says when it started: it may
	// be the only report of the attempt.
	final := func(status jobsv1.JobStatus) *eventsv1.ExecutionUpdate {
		upd := r.update(item, status)
		upd.StartTime = timestamppb.New(j.start)
		return upd
	}

	if n := proto.Size(out); herr == nil && n > MaxOutputBytes {
		herr = &problem.Error{Code: grpccodes.ResourceExhausted, Type: TypeOutputTooLarge, Title: "Output too large",
			Detail: fmt.Sprintf("the job's output is %d bytes encoded, over the limit of %d: write large results to an output locator", n, MaxOutputBytes)}
	}
	switch cause := context.Cause(jobCtx); {
	case herr == nil:
		upd := final(jobsv1.JobStatus_JOB_STATUS_COMPLETED)
		upd.Progress = 100
		upd.Output = out
		upd.VerifiedQuantity = qty
		return upd
	case errors.Is(cause, errShutdown):
		log.InfoContext(ctx, "job stopped by shutdown; handing it back", "err", herr)
		return nil
	case errors.Is(cause, errCancelRequested):
		upd := final(jobsv1.JobStatus_JOB_STATUS_CANCELED)
		upd.Message = "canceled by request"
		return upd
	case errors.Is(cause, errTimeout):
		upd := final(jobsv1.JobStatus_JOB_STATUS_FAILED)
		upd.Error = (&problem.Error{Code: grpccodes.DeadlineExceeded, Type: TypeTimeout, Title: "Timed out",
			Detail: fmt.Sprintf("job did not finish within its timeout of %v", item.GetTimeout().AsDuration())}).Problem()
		return upd
	default:
		upd := final(jobsv1.JobStatus_JOB_STATUS_FAILED)
		var pe *problem.Error
		if !errors.As(herr, &pe) {
			pe = &problem.Error{Code: grpccodes.Internal, Type: TypeExecutionFailed, Title: "Execution failed", Detail: herr.Error()}
		}
		upd.Error = pe.Problem()
		log.WarnContext(ctx, "job failed", "problem", upd.Error.GetType(), "detail", upd.Error.GetDetail())
		return upd
	}
}

// onStop registers stop for the run of attempt of job id until the returned
// func is called.
func (r *Runner) onStop(id string, attempt int32, stop func()) (remove func()) {
	f := &stopper{attempt: attempt, stop: stop}
	r.stopsMu.Lock()
	if r.stops == nil {
		r.stops = map[string][]*stopper{}
	}
	r.stops[id] = append(r.stops[id], f)
	r.stopsMu.Unlock()
	return func() {
		r.stopsMu.Lock()
		defer r.stopsMu.Unlock()
		left := slices.DeleteFunc(r.stops[id], func(g *stopper) bool { return g == f })
		if len(left) == 0 {
			delete(r.stops, id)
		} else {
			r.stops[id] = left
		}
	}
}

// onCancel stops the running job a cancel request names, if it runs here:
// every run of it.
func (r *Runner) onCancel(m *nats.Msg) {
	r.stopRuns(strings.TrimPrefix(m.Subject, bus.SubjectCancel("")), func(int32) bool { return true })
}

// onStopAttempt stops the runs of the attempts a stop names (its attempts
// and earlier) of the job it names: the processor ended them while this
// worker, cut off from it, ran on. A later attempt of the job, which may run
// here too, goes on.
func (r *Runner) onStopAttempt(m *nats.Msg) {
	var ev eventsv1.JobCancelRequested
	if err := bus.Decode(m.Data, &ev); err != nil {
		r.log.Warn("undecodable stop request ignored", "subject", m.Subject, "err", err)
		return
	}
	r.stopRuns(strings.TrimPrefix(m.Subject, bus.SubjectStopAttempt("")), func(attempt int32) bool { return attempt <= ev.GetAttempts() })
}

// stopRuns stops the runs of job id whose attempt matches.
func (r *Runner) stopRuns(id string, match func(attempt int32) bool) {
	r.stopsMu.Lock()
	var stops []func()
	for _, s := range r.stops[id] {
		if match(s.attempt) {
			stops = append(stops, s.stop)
		}
	}
	r.stopsMu.Unlock()
	for _, stop := range stops {
		stop()
	}
}

// handlerContext is the ctx item's handler runs under: jobCtx, carrying the
// job's locator roots when the item has them (locator.WithTenantRoots), so
// that every file:// and s3:// locator the handler resolves through a
// locator.Resolver with it lies under them, whichever field of the job it
// came from. An item without them (from a processor older than them) leaves
// the resolver's own roots alone. A job resolving nothing pays for the ctx
// value only.
func handlerContext(jobCtx context.Context, item *eventsv1.WorkItem) context.Context {
	if lr := item.GetLocatorRoots(); lr != nil {
		return locator.WithTenantRoots(jobCtx, lr.GetRoots())
	}
	return jobCtx
}

// runHandler calls h, turning a panic into an error: one bad input must not
// take down the jobs of the other slots.
func (r *Runner) runHandler(ctx context.Context, h Handler, item *eventsv1.WorkItem, progress func(int)) (out *jobsv1.JobOutput, qty float64, err error) {
	defer func() {
		if p := recover(); p != nil {
			r.log.ErrorContext(ctx, "handler panicked", "job", item.GetJobId(), "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("handler panicked: %v", p)
		}
	}()
	return h(ctx, item, progress)
}

// run is a job as its slot's companion sees it.
type run struct {
	// ctx bounds the retries of RUNNING (see publish).
	ctx context.Context
	// hbCtx ends when the handler has returned and RUNNING is settled.
	hbCtx    context.Context
	log      *slog.Logger
	item     *eventsv1.WorkItem
	msg      jetstream.Msg
	progress *atomic.Int32
	start    time.Time     // when the handler started
	ended    chan struct{} // closed when the handler has returned
	// redelivered: the item was delivered before; RUNNING goes out at once.
	redelivered bool
	// announced gets the outcome of storing RUNNING: nil too when the
	// handler ended within RunningDelay and RUNNING was never sent.
	announced chan error
	done      chan struct{}
}

// announce stores j's RUNNING once it has run for RunningDelay (at once if
// its item was delivered before), then keeps the item ours and reports
// progress (heartbeat) until j.hbCtx ends. delay is the companion's timer,
// stopped between jobs.
func (r *Runner) announce(j *run, delay *time.Timer) {
	defer close(j.done)
	if d := r.cfg.RunningDelay - time.Since(j.start); d > 0 && !j.redelivered {
		delay.Reset(d)
		select {
		case <-j.ended:
			delay.Stop()
			j.announced <- nil
			return
		case <-delay.C:
		}
	}
	upd := r.update(j.item, jobsv1.JobStatus_JOB_STATUS_RUNNING)
	// The state began when the handler did, not when it is reported.
	upd.Time = timestamppb.New(j.start)
	upd.StartTime = upd.Time
	err := r.publish(j.ctx, upd, "")
	j.announced <- err
	if err != nil {
		return
	}
	j.log.InfoContext(j.ctx, "job running")
	r.heartbeat(j.hbCtx, j.log, j.item, j.msg, j.progress)
}

// heartbeat extends the item's ack deadline every AckWait/3, publishes
// progress changes at most once per ProgressInterval and a "heartbeat" update
// every HeartbeatInterval, until ctx ends.
func (r *Runner) heartbeat(ctx context.Context, log *slog.Logger, item *eventsv1.WorkItem, msg jetstream.Msg, progress *atomic.Int32) {
	extend := time.NewTicker(r.cfg.AckWait / 3)
	defer extend.Stop()
	report := time.NewTicker(r.cfg.ProgressInterval)
	defer report.Stop()
	beat := time.NewTicker(r.cfg.HeartbeatInterval)
	defer beat.Stop()
	sent := int32(-1)
	var seq int
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			seq++
			upd := r.update(item, jobsv1.JobStatus_JOB_STATUS_RUNNING)
			upd.Progress = max(progress.Load(), 0)
			upd.Message = "heartbeat"
			if err := r.publish(ctx, upd, fmt.Sprintf("-hb%d", seq)); err != nil {
				log.DebugContext(ctx, "heartbeat update", "err", err)
			}
		case <-extend.C:
			if err := msg.InProgress(); err != nil {
				log.WarnContext(ctx, "extend ack deadline", "err", err)
			}
		case <-report.C:
			p := progress.Load()
			if p < 0 || p == sent {
				continue
			}
			upd := r.update(item, jobsv1.JobStatus_JOB_STATUS_RUNNING)
			upd.Progress = p
			if err := r.publish(ctx, upd, fmt.Sprintf("-%d", p)); err != nil {
				log.DebugContext(ctx, "progress update", "err", err)
				continue
			}
			sent = p
		}
	}
}

func (r *Runner) update(item *eventsv1.WorkItem, status jobsv1.JobStatus) *eventsv1.ExecutionUpdate {
	return &eventsv1.ExecutionUpdate{
		JobId:      item.GetJobId(),
		Attempt:    item.GetAttempt(),
		Service:    r.cfg.Service,
		InstanceId: r.cfg.InstanceID,
		Status:     status,
		Time:       timestamppb.Now(),
	}
}

// MsgID is the JetStream message id of an execution update:
// exec-<job>-<attempt>-<instance>-<status>[suffix], suffix being
// -<progress> or -hb<heartbeat seq>. The instance is part of it so that an
// item redelivered to another instance within the dedup window is not
// de-duplicated away.
func MsgID(u *eventsv1.ExecutionUpdate, suffix string) string {
	return fmt.Sprintf("exec-%s-%d-%s-%s%s", u.GetJobId(), u.GetAttempt(), u.GetInstanceId(), jobstate.Name(u.GetStatus()), suffix)
}

// terminalPublishWait bounds the retries of a terminal update.
const terminalPublishWait = 2 * time.Minute

// publish sends u, retrying while NATS is unavailable (e.g. reconnecting)
// until ctx ends; the msg id makes retries safe.
func (r *Runner) publish(ctx context.Context, u *eventsv1.ExecutionUpdate, suffix string) error {
	delay := 100 * time.Millisecond
	for {
		err := bus.Publish(ctx, r.cfg.JS, bus.SubjectExecution(u.GetJobId()), MsgID(u, suffix), u)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		}
		r.log.WarnContext(ctx, "publish execution update, retrying", "job", u.GetJobId(), "err", err)
		sleep(ctx, delay)
		delay = min(2*delay, 2*time.Second)
	}
}
