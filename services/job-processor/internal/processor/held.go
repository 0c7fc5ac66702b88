package processor

import (
	"context"
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
// Nothing is lost if this process dies holding announcements: SCHEDULED is
// a passing state. The job's next announcement (RUNNING, its end) moves the
// mediator's record on, and a job left NEW longer than the mediator's
// sweep allows is announced again, which makes the processor announce the
// record's state.

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
}

func newHeld(delay time.Duration) *held {
	return &held{delay: delay, byJob: map[string]*heldMsg{}, wake: make(chan struct{}, 1)}
}

// hold keeps msg, job's SCHEDULED, until the delay has passed. It reports
// false when the caller is to announce it now: no delay, or too many held.
// The announcement stays in the trace of ctx, the dispatch's.
func (h *held) hold(ctx context.Context, job string, msg outMsg, now time.Time) bool {
	if h.delay <= 0 {
		return false
	}
	msg.header = nats.Header{}
	otel.GetTextMapPropagator().Inject(ctx, bus.HeaderCarrier(msg.header))
	msg.announces = "" // when it goes out, nothing of its job's is held
	h.mu.Lock()
	defer h.mu.Unlock()
	// The queue, not byJob, is what is bounded: released entries stay in
	// it until they fall due.
	if len(h.queue) >= heldMax {
		return false
	}
	e := &heldMsg{job: job, due: now.Add(h.delay), msg: msg}
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

// release drops job's held announcement: a later one of this replica's
// says more. (One published by another replica does not release it; the
// late SCHEDULED that follows is then stale, and the mediator ignores it.)
func (h *held) release(job string) {
	if h.delay <= 0 {
		return
	}
	h.mu.Lock()
	delete(h.byJob, job)
	h.mu.Unlock()
}

// take removes and returns the announcements due by now (all of them when
// now is zero), and when the next one falls due (zero if none is held).
func (h *held) take(now time.Time) ([]outMsg, time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var due []outMsg
	n := 0
	for _, e := range h.queue {
		if !now.IsZero() && e.due.After(now) {
			break
		}
		n++
		if h.byJob[e.job] == e {
			delete(h.byJob, e.job)
			due = append(due, e.msg)
		}
	}
	// Dropping a prefix keeps the backing array; copying the rest down
	// keeps it from growing with every entry ever held.
	h.queue = h.queue[:copy(h.queue, h.queue[n:])]
	if len(h.queue) == 0 {
		return due, time.Time{}
	}
	return due, h.queue[0].due
}

// announceHeld publishes held announcements as they fall due, until ctx
// ends; flushHeld publishes what is left then.
func (p *Processor) announceHeld(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		msgs, next := p.held.take(p.cfg.Now())
		p.publishHeld(ctx, msgs)
		var tick <-chan time.Time
		if !next.IsZero() {
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
	msgs, _ := p.held.take(time.Time{})
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	p.publishHeld(ctx, msgs)
}

// publishHeld publishes msgs in one round trip. A failure is only logged:
// the job's next announcement, or the mediator's sweep, makes up for it.
func (p *Processor) publishHeld(ctx context.Context, msgs []outMsg) {
	if len(msgs) == 0 {
		return
	}
	if _, err := p.publishAll(ctx, msgs...); err != nil {
		slog.WarnContext(ctx, "announce SCHEDULED", "jobs", len(msgs), "err", err)
	}
}
