package webhook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/nats-io/nats.go/jetstream"
)

// dispatcher holds the notifications the consumer hands over and posts
// them: a job's one after the other in the order they came, different
// jobs' in parallel within the limits of Config (Concurrency, PerTenant,
// PerEndpoint), so a slow endpoint holds up only what waits for it.
//
// The consumer hands each message over at once (bus.ErrKept) instead of
// posting it on its own goroutine: bus's lanes (a subject hash per lane)
// would put a fast endpoint's job behind a slow one sharing its lane, and a
// full lane stops the consumer for every lane. A held message stays
// unacked; keepAlive tells the server it is in progress so that it is not
// redelivered while it waits, and a mediator that dies stops telling, so
// another one gets it after AckWait (at least once).
type dispatcher struct {
	n *Notifier
	// stop closes once the consumer stopped (no message comes after it):
	// no POST starts after it, the messages still waiting are handed back
	// (to the other mediators, or this one restarted), each job's in order.
	// POSTs in flight finish.
	stop <-chan struct{}
	// base is the context of the POSTs: it outlives stop, bound is their
	// limit (below AckWait, so one in flight is not redelivered).
	base  context.Context
	bound time.Duration

	mu     sync.Mutex
	queues map[string]*queue // by job, while it holds messages
	held   int               // messages in queues and not yet being settled, at most max
	max    int
	limits map[string]*limit // per tenant and per tenant's endpoint host, while in use
	global chan struct{}
	// breakers fail at once the notifications of a tenant's endpoint host
	// whose POSTs keep timing out, instead of letting each hold its slots
	// and the consumer's for a whole Timeout.
	breakers *breakers

	wg sync.WaitGroup
}

// queue is one job's held messages, oldest first; its goroutine posts the
// head.
type queue struct {
	items   []item
	posting bool // the head's POST is in flight or it is being settled (it is not kept alive)
}

type item struct {
	msg jetstream.Msg
	job *jobsv1.Job
	seq uint64 // stream sequence: a redelivered copy has the same
	// attempt is the POST this is of the change: 1 for a notification
	// (however often it was delivered: a hand-back posted nothing), that
	// of its retry header for a retry.
	attempt int
	// eventID is the change's Medius-Event-Id, the same on every attempt;
	// origin the stream sequence of its notification, naming its retries.
	eventID string
	origin  uint64
}

// limit is a counting semaphore that lives while a goroutine waits for or
// holds one of its slots, so the map of them stays as small as the jobs held.
type limit struct {
	slots chan struct{}
	users int
}

func newDispatcher(ctx context.Context, n *Notifier, stop <-chan struct{}) *dispatcher {
	d := &dispatcher{
		n: n, stop: stop,
		base:     context.WithoutCancel(ctx),
		bound:    n.cfg.Timeout + 10*time.Second, // the secret's lookup, then the POST
		queues:   map[string]*queue{},
		max:      n.cfg.MaxPending + n.cfg.MaxPendingRetries,
		limits:   map[string]*limit{},
		global:   make(chan struct{}, n.cfg.Concurrency),
		breakers: newBreakers(n.cfg, n.now),
	}
	d.wg.Go(func() { d.keepAlive(n.ackWait() / 3) })
	return d
}

// accept is the notifications consumer's handler: it holds msg, a change's
// first attempt, behind its job's earlier messages and returns at once.
func (d *dispatcher) accept(_ context.Context, msg jetstream.Msg) error {
	job := &jobsv1.Job{}
	if err := bus.Decode(msg.Data(), job); err != nil {
		return err
	}
	return d.hold(item{msg: msg, job: job, attempt: 1, eventID: msg.Headers().Get(jetstream.MsgIDHeader)})
}

// acceptRetry is the retries consumer's handler: a retry that comes before
// its time (as it does once at once, when published) is handed back until
// then; one that is due is held as accept holds a notification, behind its
// job's messages held here.
func (d *dispatcher) acceptRetry(_ context.Context, msg jetstream.Msg) error {
	job := &jobsv1.Job{}
	if err := bus.Decode(msg.Data(), job); err != nil {
		return err
	}
	r, err := parseRetry(msg.Headers())
	if err != nil {
		return bus.Permanent(fmt.Errorf("notification retry of job %s: %w", job.GetId(), err))
	}
	if wait := r.notBefore.Sub(d.n.now()); wait > 0 {
		return bus.RetryAfter(wait, errNotDue)
	}
	return d.hold(item{msg: msg, job: job, attempt: r.attempt, eventID: r.eventID, origin: r.origin})
}

var errNotDue = errors.New("notification retry not due yet")

// hold queues it behind its job's held messages, starting the job's
// goroutine if it has none.
func (d *dispatcher) hold(it item) error {
	redelivered := false
	if md, err := it.msg.Metadata(); err == nil {
		it.seq, redelivered = md.Sequence.Stream, md.NumDelivered > 1
	}
	if it.origin == 0 {
		it.origin = it.seq
	}
	// A job's notifications and retries share its queue: one POST at a
	// time per job.
	key := it.job.GetId()
	d.mu.Lock()
	defer d.mu.Unlock()
	q, ok := d.queues[key]
	if ok && redelivered && q.redelivery(it.seq, it.msg) {
		return bus.ErrKept
	}
	if d.held >= d.max {
		// max is the sum of both consumers' MaxAckPending, and held never
		// exceeds what the server counts as unsettled, so only a message
		// redelivered after this mediator settled it, or to another one
		// that settled it (its keep-alive lost), gets here.
		return bus.RetryAfter(time.Second, errors.New("too many notifications held"))
	}
	d.held++
	if !ok {
		q = &queue{}
		d.queues[key] = q
		d.wg.Go(func() { d.run(key, q) })
	}
	q.items = append(q.items, it)
	return bus.ErrKept
}

// redelivery takes msg, a redelivered copy of a message, in place of the
// copy q holds, if it holds one (its keep-alive was lost, say on a NATS
// outage longer than AckWait): queued again, it would be posted twice, the
// second time after its job's later notifications. A waiting copy is
// replaced by the new one; a copy whose POST is in flight, or being
// settled, settles the message (the server settles a stream sequence
// whichever of its deliveries settles it), so the new one is dropped
// unsettled. d.mu held.
func (q *queue) redelivery(seq uint64, msg jetstream.Msg) bool {
	for i := range q.items {
		if q.items[i].seq != seq {
			continue
		}
		if i > 0 || !q.posting {
			q.items[i].msg = msg
		}
		return true
	}
	return false
}

// run posts q's messages one after the other until none is left.
func (d *dispatcher) run(key string, q *queue) {
	for {
		d.mu.Lock()
		if len(q.items) == 0 {
			delete(d.queues, key)
			d.mu.Unlock()
			return
		}
		it := q.items[0]
		d.mu.Unlock()

		d.post(q, it)

		d.mu.Lock()
		q.items[0] = item{}
		q.items = q.items[1:]
		q.posting = false
		d.mu.Unlock()
	}
}

// post waits for a slot for it, posts it and settles it; once stopped it
// hands it back for another mediator (or this one restarted) to post. One
// whose endpoint host's breaker is open is not posted: it is settled at
// once as a failed attempt, so a host that never answers does not hold a
// slot (its own, and the consumer's) for a whole Timeout per notification.
func (d *dispatcher) post(q *queue, it item) {
	key := breakerKey{it.job.GetTenant(), endpointHost(it.job.GetNotificationEndpoint())}
	// Once stopped it goes on to acquire, which hands it back whatever this
	// mediator's breaker says: failed, it would spend an attempt that
	// another mediator (its breaker closed) might have posted.
	if err := d.breakers.check(key); err != nil && !d.stopping() {
		d.fail(q, it, err)
		return
	}
	release, ok := d.acquire(it.job)
	if !ok {
		d.settling()
		_ = it.msg.Nak()
		return
	}
	defer release()
	// Checked again: it may have opened while this one waited for the
	// slots, those ahead of it timing out.
	probe, err := d.breakers.admit(key)
	if err != nil {
		d.fail(q, it, err)
		return
	}
	d.mu.Lock()
	q.posting = true
	d.mu.Unlock()
	// Its AckWait starts again: the POST ends before it does.
	_ = it.msg.InProgress()
	ctx, cancel := d.context(it)
	defer cancel()
	err = d.n.Deliver(ctx, it.job, it.eventID)
	if tr, until := d.breakers.record(key, probe, err); tr != unchanged {
		logTransition(ctx, it.job, key, tr, until, d.n.cfg.BreakAfter)
	}
	d.finish(ctx, it, err)
}

// fail settles it, not posted, as an attempt that failed with err.
func (d *dispatcher) fail(q *queue, it item, err error) {
	d.mu.Lock()
	q.posting = true
	d.mu.Unlock()
	ctx, cancel := d.context(it)
	defer cancel()
	d.finish(ctx, it, err)
}

// context is that of its POST and settlement: its trace context, bound.
func (d *dispatcher) context(it item) (context.Context, context.CancelFunc) {
	return context.WithTimeout(bus.ContextFromHeader(d.base, it.msg.Headers()), d.bound)
}

// finish settles it, whose attempt ended with err.
func (d *dispatcher) finish(ctx context.Context, it item, err error) {
	settle := d.n.outcome(ctx, it, err)
	d.settling()
	settle()
}

// logTransition logs a breaker's transition tr, once: the POST whose
// outcome made it logs it.
func logTransition(ctx context.Context, job *jobsv1.Job, key breakerKey, tr transition, until time.Time, after int) {
	endpoint := locator.Redact(job.GetNotificationEndpoint())
	switch tr {
	case opened:
		slog.WarnContext(ctx, "webhook endpoint host keeps timing out: its notifications fail without a POST until its cool-down ends",
			"tenant", key.tenant, "endpoint", endpoint, "timeouts", after, "until", until)
	case reopened:
		slog.WarnContext(ctx, "webhook endpoint host still times out: its notifications fail without a POST for longer",
			"tenant", key.tenant, "endpoint", endpoint, "until", until)
	case closed:
		slog.InfoContext(ctx, "webhook endpoint host answers again: its notifications are posted",
			"tenant", key.tenant, "endpoint", endpoint)
	}
}

// settling counts one held message fewer, before it is settled: settling
// it frees its slot on the server, which may deliver the next message at
// once, and that one must find room here (held never exceeds what the
// server counts as unsettled).
func (d *dispatcher) settling() {
	d.mu.Lock()
	d.held--
	d.mu.Unlock()
}

// acquire takes a slot of job's tenant and endpoint host, of its tenant, and
// of the mediator, in that order (always the same: no deadlock), waiting
// for each. A job waiting for its endpoint's slot holds no other, so a slow
// endpoint does not take its tenant's slots from its tenant's other
// endpoints. It fails once stopped.
func (d *dispatcher) acquire(job *jobsv1.Job) (release func(), ok bool) {
	if d.stopping() {
		return nil, false
	}
	tenant := job.GetTenant()
	keys := []string{"endpoint\x00" + tenant + "\x00" + endpointHost(job.GetNotificationEndpoint()), "tenant\x00" + tenant}
	d.mu.Lock()
	sems := []chan struct{}{d.use(keys[0], d.n.cfg.PerEndpoint), d.use(keys[1], d.n.cfg.PerTenant), d.global}
	d.mu.Unlock()
	taken := 0
	release = func() {
		for _, s := range sems[:taken] {
			<-s
		}
		d.mu.Lock()
		for _, k := range keys {
			d.unuse(k)
		}
		d.mu.Unlock()
	}
	for _, s := range sems {
		select {
		case s <- struct{}{}:
			taken++
		case <-d.stop:
			release()
			return nil, false
		}
	}
	return release, true
}

// stopping reports whether the dispatcher has been told to stop.
func (d *dispatcher) stopping() bool {
	select {
	case <-d.stop:
		return true
	default:
		return false
	}
}

// use returns the slots of key (n of them), counting one more user. d.mu held.
func (d *dispatcher) use(key string, n int) chan struct{} {
	l, ok := d.limits[key]
	if !ok {
		l = &limit{slots: make(chan struct{}, n)}
		d.limits[key] = l
	}
	l.users++
	return l.slots
}

// unuse counts one user of key fewer, forgetting it after the last. d.mu held.
func (d *dispatcher) unuse(key string) {
	if l := d.limits[key]; l != nil {
		if l.users--; l.users <= 0 {
			delete(d.limits, key)
		}
	}
}

// endpointHost is what PerEndpoint counts by, and a breaker guards: host
// and port, so one receiver is not sent more than PerEndpoint POSTs at once
// by one tenant. The port is the scheme's when the URL names none: the
// same receiver whether named or not, and http's and https's on one host
// are two (one hanging does not fail the other's notifications).
func endpointHost(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		return endpoint
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// keepAlive tells the server, every period, that the messages waiting for
// their turn are in progress, and forgets the breakers that no longer
// matter, until stopped.
func (d *dispatcher) keepAlive(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var waiting []jetstream.Msg
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		d.breakers.prune()
		waiting = waiting[:0]
		d.mu.Lock()
		for _, q := range d.queues {
			items := q.items
			if q.posting {
				items = items[1:]
			}
			for _, it := range items {
				waiting = append(waiting, it.msg)
			}
		}
		d.mu.Unlock()
		for _, m := range waiting {
			_ = m.InProgress()
		}
		clear(waiting) // holds no settled message until the next round
	}
}

// wait returns once every goroutine is done: after stop, and after the
// consumer handed its last message over.
func (d *dispatcher) wait() { d.wg.Wait() }
