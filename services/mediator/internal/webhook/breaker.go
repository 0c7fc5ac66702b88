package webhook

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// errTimedOut marks a POST its endpoint did not answer within
// Config.Timeout: the only failure that holds a slot for long, so the only
// one a breaker counts.
var errTimedOut = errors.New("timed out")

// maxBreakers bounds the endpoint hosts whose breakers are remembered at
// once. Past it the ones that no longer matter are forgotten first; if
// none, a new host goes unprotected until there is room.
const maxBreakers = 4096

// untilLayout is how errors say until when a breaker is open: to the
// millisecond, as a short cool-down would be misread in whole seconds.
const untilLayout = "2006-01-02T15:04:05.000Z07:00"

// breakerKey is what a breaker guards: one tenant's endpoint host and port,
// as PerEndpoint counts (endpointHost).
type breakerKey struct{ tenant, host string }

// breakers keeps a circuit breaker per tenant's endpoint host, so that an
// endpoint that never answers does not make each notification to it hold
// a consumer slot for a whole Timeout. After Config.BreakAfter of its POSTs
// in a row timed out, the host's breaker opens for a cool-down
// (3 × Timeout, doubling after each probe that times out too, up to
// MaxDelay): meanwhile a notification of that host whose turn comes is
// failed at once, without a POST, and goes to its retry like any failed
// attempt. Once the cool-down has passed one POST goes through as a probe
// (half-open), the others still failing at once: its success closes the
// breaker, its time-out opens it again for longer, and any other failure
// (an error status, a refused connection: answered quickly, holding no
// slot) lets the next one due probe again. A success of any POST forgets
// the host's time-outs.
//
// A host is remembered only while it has time-outs that count: a closed
// breaker without any is not kept, and one left alone (no time-out for
// MaxDelay while closed, or its cool-down over for MaxDelay without a
// probe) is forgotten by prune.
type breakers struct {
	after          int           // time-outs in a row that open a breaker
	first, longest time.Duration // its first cool-down, its longest
	now            func() time.Time

	mu sync.Mutex
	m  map[breakerKey]*breaker
}

// breaker is one host's state.
type breaker struct {
	timeouts int           // POSTs timed out in a row
	last     time.Time     // when the last of them timed out
	until    time.Time     // open until then; zero while closed
	cooldown time.Duration // of its latest opening
	probing  bool          // half-open, and a probe is in flight
}

// transition is how a POST's outcome changed a breaker, for the log.
type transition int

const (
	unchanged transition = iota
	opened               // closed to open
	reopened             // its probe timed out: open for longer
	closed               // open or half-open to closed
)

func newBreakers(cfg Config, now func() time.Time) *breakers {
	first := min(3*cfg.Timeout, cfg.MaxDelay)
	return &breakers{after: cfg.BreakAfter, first: first, longest: max(first, cfg.MaxDelay), now: now, m: map[breakerKey]*breaker{}}
}

// check returns why key's notification must not be posted now: its breaker
// is open, or half-open with its probe in flight. A nil error promises no
// POST: admit decides once the slots are taken.
func (b *breakers) check(k breakerKey) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, err := b.allow(k, false)
	return err
}

// admit is check, and takes the probe of a half-open breaker that has none
// in flight: the caller then posts, and must record its outcome with
// probe set.
func (b *breakers) admit(k breakerKey) (probe bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.allow(k, true)
}

// allow is check and admit. b.mu held.
func (b *breakers) allow(k breakerKey, take bool) (probe bool, err error) {
	s := b.m[k]
	if s == nil || s.until.IsZero() {
		return false, nil
	}
	if b.now().Before(s.until) {
		return false, fmt.Errorf("endpoint host %s timed out %d times in a row: not tried until %s",
			k.host, s.timeouts, s.until.UTC().Format(untilLayout))
	}
	if s.probing {
		return false, fmt.Errorf("endpoint host %s timed out %d times in a row: not tried until the POST probing it answers",
			k.host, s.timeouts)
	}
	if take {
		s.probing = true
	}
	return take, nil
}

// record counts the outcome of a POST to k (probe: admitted as its probe)
// and returns how it changed the breaker and, if it is open, until when.
func (b *breakers) record(k breakerKey, probe bool, err error) (transition, time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.m[k]
	switch {
	case err == nil:
		if s == nil {
			return unchanged, time.Time{}
		}
		delete(b.m, k)
		if s.until.IsZero() {
			return unchanged, time.Time{}
		}
		return closed, time.Time{}
	case !errors.Is(err, errTimedOut):
		// Answered, or failed, quickly: no slot was held long. A probe
		// so ended says nothing of whether the host hangs still: the next
		// one due probes again.
		if probe && s != nil {
			s.probing = false
		}
		return unchanged, time.Time{}
	}
	now := b.now()
	if s == nil {
		if len(b.m) >= maxBreakers {
			b.pruneLocked(now)
		}
		if len(b.m) >= maxBreakers {
			return unchanged, time.Time{}
		}
		s = &breaker{}
		b.m[k] = s
	}
	s.timeouts++
	s.last = now
	switch {
	case probe && s.probing:
		s.probing = false
		s.cooldown = min(2*s.cooldown, b.longest)
		s.until = now.Add(s.cooldown)
		return reopened, s.until
	case s.until.IsZero() && s.timeouts >= b.after:
		s.cooldown = b.first
		s.until = now.Add(s.cooldown)
		return opened, s.until
	}
	// A POST started before the breaker opened, timing out after.
	return unchanged, time.Time{}
}

// prune forgets the breakers that no longer hold anything back: closed
// ones whose last time-out is MaxDelay old, open ones whose cool-down
// ended MaxDelay ago with no probe since (a host no one notifies any more).
func (b *breakers) prune() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pruneLocked(b.now())
}

func (b *breakers) pruneLocked(now time.Time) {
	for k, s := range b.m {
		if s.probing {
			continue
		}
		since := s.last
		if !s.until.IsZero() {
			since = s.until
		}
		if now.Sub(since) >= b.longest {
			delete(b.m, k)
		}
	}
}
