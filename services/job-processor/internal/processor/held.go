package processor

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/medius-platform/medius/pkg/bus"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
)

// A job dispatched at once (createScheduled) is announced SCHEDULED only if
// it is still at that point ScheduledDelay later. Most short jobs end
// sooner, and their end, which carries the execution, is the mediator's first
// news of them: the SCHEDULED announcement, its delivery and the mediator's
// record write for it are saved, about a sixth of the messages of such a job.
// The job's own record is SCHEDULED from the start, so /executions shows
// the dispatch at once.
//
// A held SCHEDULED is published only as the job's first announcement (the
// stream refuses it once the job's subject has any): one released too late,
// or held by a replica other than the one that announced the job's end, is
// dropped there rather than sent after the news it is older than. A publish
// that fails is held again and retried; a stopping processor publishes what
// it holds.
//
// The JobCreated that dispatched the job is acknowledged only once its held
// SCHEDULED is settled: published, refused as no longer the first, or made
// moot by a later announcement of the job's. So a replica killed holding
// announcements loses none: their JobCreated go to another replica after
// the ack wait, which finds the record SCHEDULED and announces it
// (ensureWork). Meanwhile the mediator shows such a job NEW, unless its
// worker reports first, while /executions, read from the processor's
// record, shows it SCHEDULED.

// keptAck acknowledges a JobCreated kept by createScheduled once both its
// job's held SCHEDULED is settled and its dispatch is known to have worked:
// the announcement may fall due before the record's and the work item's
// publishes are acknowledged, and a dispatch that then fails must leave the
// JobCreated to be delivered again, not acknowledged by its announcement.
// A dispatch that fails leaves it to its handler's result.
type keptAck struct {
	ack func()

	mu                    sync.Mutex
	announced, dispatched bool
}

// settle: the held SCHEDULED is settled (published, refused, or made moot).
func (k *keptAck) settle() { k.note(&k.announced) }

// dispatchDone: the dispatch's publishes are acknowledged.
func (k *keptAck) dispatchDone() { k.note(&k.dispatched) }

// note sets one of the two conditions, and acknowledges once both hold.
func (k *keptAck) note(cond *bool) {
	k.mu.Lock()
	*cond = true
	ready := k.announced && k.dispatched
	k.mu.Unlock()
	if ready {
		k.ack()
	}
}

// MaxScheduledDelay bounds ScheduledDelay: a JobCreated waits for its job's
// held SCHEDULED, and one held past the consumer's AckWait would be
// delivered again meanwhile; a quarter leaves room for a failed publish to
// be held once more.
const MaxScheduledDelay = AckWait / 4

// DefaultScheduledDelay is how long SCHEDULED is held back by default.
const DefaultScheduledDelay = 500 * time.Millisecond

// heldMax bounds the announcements held at once (each a few hundred bytes):
// a burst beyond it is announced at once, as without the delay.
const heldMax = 8192

// held is the SCHEDULED announcements a replica holds back, in the order
// they fall due (all are held for the same delay).
type held struct {
	delay time.Duration
	mu    sync.Mutex
	byJob map[string]*heldMsg
	queue []*heldMsg
	// wake is signalled when the queue gets its first entry.
	wake chan struct{}
}

type heldMsg struct {
	job string
	due time.Time
	msg outMsg
	// settle acknowledges the JobCreated that dispatched the job.
	settle func()
}

func newHeld(delay time.Duration) *held {
	return &held{delay: delay, byJob: map[string]*heldMsg{}, wake: make(chan struct{}, 1)}
}

// hold keeps msg, job's SCHEDULED, until the delay has passed, and settle,
// to call once it is settled. It reports false when the caller is to
// announce it now: no delay, or too many held. The announcement stays in
// the trace of ctx, the dispatch's.
func (h *held) hold(ctx context.Context, job string, msg outMsg, now time.Time, settle func()) bool {
	if h.delay <= 0 {
		return false
	}
	// A first hold takes the dispatch's trace; a message held again after
	// a failed publish has it already.
	if msg.header == nil {
		msg.header = nats.Header{}
		otel.GetTextMapPropagator().Inject(ctx, bus.HeaderCarrier(msg.header))
	}
	msg.announces = "" // when it goes out, nothing of its job's is held
	msg.expectNew = true
	h.mu.Lock()
	defer h.mu.Unlock()
	// The queue, not byJob, is what is bounded: released entries stay in
	// it until they fall due.
	if len(h.queue) >= heldMax {
		return false
	}
	e := &heldMsg{job: job, due: now.Add(h.delay), msg: msg, settle: settle}
	h.byJob[job] = e
	h.queue = append(h.queue, e)
	if len(h.queue) == 1 {
		select {
		case h.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// release drops job's held announcement, as a later one of this replica's
// goes out and says more, and returns it, for the caller to settle once
// that later one is stored (nil if none is held). (One published by another
// replica does not release it; the stream then refuses the held SCHEDULED,
// no longer the job's first.)
func (h *held) release(job string) *heldMsg { return h.remove(job) }

// drop drops job's held announcement unsettled: the job was not dispatched
// after all, and whatever does dispatch it announces it.
func (h *held) drop(job string) { h.remove(job) }

func (h *held) remove(job string) *heldMsg {
	if h.delay <= 0 {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.byJob[job]
	delete(h.byJob, job)
	return e
}

// take removes and returns the announcements due by now (all of them when
// now is zero).
func (h *held) take(now time.Time) []*heldMsg {
	h.mu.Lock()
	defer h.mu.Unlock()
	var due []*heldMsg
	n := 0
	for _, e := range h.queue {
		if !now.IsZero() && e.due.After(now) {
			break
		}
		n++
		if h.byJob[e.job] == e {
			delete(h.byJob, e.job)
			due = append(due, e)
		}
	}
	// Dropping a prefix keeps the backing array; copying the rest down
	// keeps it from growing with every entry ever held.
	h.queue = h.queue[:copy(h.queue, h.queue[n:])]
	return due
}

// next is when the next held announcement falls due; zero if none is held.
func (h *held) next() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.queue) == 0 {
		return time.Time{}
	}
	return h.queue[0].due
}

// announceHeld publishes held announcements as they fall due, until ctx
// ends; flushHeld publishes what is left then.
func (p *Processor) announceHeld(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		p.publishHeld(ctx, p.held.take(p.cfg.Now()), true)
		var tick <-chan time.Time
		if next := p.held.next(); !next.IsZero() {
			t.Reset(max(next.Sub(p.cfg.Now()), time.Millisecond))
			tick = t.C
		}
		select {
		case <-ctx.Done():
			return
		case <-p.held.wake:
		case <-tick:
		}
	}
}

// flushHeld announces every held SCHEDULED at once: the process stops.
func (p *Processor) flushHeld(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	p.publishHeld(ctx, p.held.take(time.Time{}), false)
}

// publishHeld publishes the held announcements es in one round trip and
// settles those published, or refused because their job has been announced
// since. One that failed otherwise is held again, when retry allows and
// there is room; else it is left unsettled, and its JobCreated, redelivered
// after the ack wait, has it announced then.
func (p *Processor) publishHeld(ctx context.Context, es []*heldMsg, retry bool) {
	if len(es) == 0 {
		return
	}
	msgs := make([]outMsg, len(es))
	for i, e := range es {
		msgs[i] = e.msg
	}
	_, errs := p.publishEach(ctx, msgs, false)
	for i, err := range errs {
		e := es[i]
		switch {
		case err == nil, errors.Is(err, errKeyExists):
			e.settle()
		case retry && p.held.hold(ctx, e.job, e.msg, p.cfg.Now(), e.settle):
			slog.DebugContext(ctx, "announce SCHEDULED; retried after the delay", "job_id", e.job, "err", err)
		default:
			slog.WarnContext(ctx, "announce SCHEDULED; left to the redelivery of its JobCreated", "job_id", e.job, "err", err)
		}
	}
}
