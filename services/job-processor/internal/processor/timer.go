package processor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/services/job-processor/internal/record"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Timers: every attempt that runs gets one ExecutionTimer message (and a job
// with a deadline one more, attempt 0, for each run: its creation and every
// restart; see restartDeadlineTimer). The timer consumer handles it and
// naks it with the delay until its next check, so timers are persisted by
// JetStream (a processor crash loses none), shared by the replicas like any
// other message (no election needed: every check is a compare-and-set on the
// record, safe when two replicas race) and cost nothing for jobs waiting in
// a work queue. A timer is acked once its attempt is over.
//
// Renewal: the events stream deletes a message older than its MaxAge (7
// days) even while a consumer holds it, so a timer must never get that
// old. One older than Config.TimerRenewAge is renewed when it is next
// handled (see renewTimer): a fresh copy goes out, one generation on, and
// the old one is acked. A timer is handled at least once per renewal age
// (no re-arm waits longer), so while a processor runs none gets older than
// twice that.
//
// Duplicates: a timer may exist twice (a renewal whose old message came
// back after more than the duplicate window, or an attempt's report
// redelivered after more than the window that started its timer again).
// That costs checks but no harm, because every move a timer makes is
// judged on the record and written by compare-and-set (store.update): the
// expiry (record.Expire, which changes nothing on an ended job, nor, for a
// timeout, on a later attempt; a repeat finds it AlreadyApplied and only
// re-announces), the loss
// of a worker (record.WorkerLost, for that very attempt while it is the
// current one and unfinished) and the dispatch of a retry (record.Schedule,
// which only moves a QUEUED job). What each does besides is a no-op when
// repeated: announcements and work items carry deterministic msg ids, a
// stop request to a stopped worker goes unheard. The one step outside the
// record, withdrawing the lost attempt's work item, is bounded by the
// attempt (withdrawAttempt): a duplicate that read the record just before
// the other dispatched the retry must not purge the retry's item, which
// shares the subject when it goes to the same service.
const (
	DurableTimer = "processor-timer"
	subjectTimer = "medius.events.timer."
	// timerMaxAckPending bounds the timers pending at once (one per running
	// attempt, plus deadlines): far above any fleet's capacity.
	timerMaxAckPending = 1 << 20
	// DefaultTimerRenewAge is the age at which a timer message is renewed:
	// far below the events stream's MaxAge (7 days), so a timer handled
	// late (its process down, or re-armed for the longest wait, which is
	// at most this) is still renewed in time, and rare enough to cost
	// nothing (a running attempt's timer is renewed once a day).
	DefaultTimerRenewAge = 24 * time.Hour
	// deadlineRecheck is the longest the deadline watch sleeps: a clock
	// that jumped is noticed within it.
	deadlineRecheck = time.Hour
)

// SubjectTimer is the subject of job id's timers.
func SubjectTimer(jobID string) string { return subjectTimer + jobID }

// ProfileLookup finds a job profile (its default timeout and attempt limit).
type ProfileLookup interface {
	Profile(ctx context.Context, name string) (*registryv1.JobProfile, error)
}

// headerFirstCheck on a timer message is how long after its publication its
// first check can have anything to do: the earliest of the heartbeat
// timeout, the timeout, the deadline and TimerInterval, as the publisher
// knew them. A delivery before that (the first comes right after the
// publish) is re-armed for the rest of the delay without reading the
// record. A timer without it is checked at once.
const headerFirstCheck = "Medius-Timer-First-Check"

// headerGeneration on a timer message counts its renewals: the first
// message of a timer has none (generation 0), its renewal 1, and so on. It
// is part of the msg id, so a renewal is not taken for a duplicate of the
// message it replaces, while the same renewal published twice is.
const headerGeneration = "Medius-Timer-Generation"

// headerRun on a deadline watch (attempt 0) started by a restart is the
// attempt that restart created; the watch started with the job has none
// (run 0). It is part of the msg id, renewals keep it: each run's watch is
// a timer of its own, never taken for a duplicate of another run's, which
// the stream would drop when the runs are less than its duplicate window
// apart.
const headerRun = "Medius-Timer-Run"

// timerMsg is generation gen of the timer of attempt of job id (0: the
// deadline watch of run, see headerRun), first checked after first; its
// msg id makes a repeat a no-op.
func timerMsg(id string, attempt, run int32, gen uint64, first time.Duration) outMsg {
	h := nats.Header{headerFirstCheck: []string{max(first, 0).String()}}
	if gen > 0 {
		h.Set(headerGeneration, strconv.FormatUint(gen, 10))
	}
	if run > 0 {
		h.Set(headerRun, strconv.Itoa(int(run)))
	}
	return outMsg{subject: SubjectTimer(id), msgID: timerMsgID(id, attempt, run, gen), m: &eventsv1.ExecutionTimer{JobId: id, Attempt: attempt}, header: h}
}

// deadlineTimer is the timer watching rec's deadline from its creation:
// nothing to check before it (HandleTimer re-checks a far one hourly).
func (p *Processor) deadlineTimer(rec *jobsv1.Job) outMsg { return p.runDeadlineTimer(rec, 0) }

// restartDeadlineTimer is the timer watching rec's deadline again once a
// restart made it wait for attempt run (the restart's attempts + 1): the
// watch started with the job ends with it (checkTimer acks it when it finds
// the job ended), so without a new one a restarted job waiting for a
// service, or for a worker to take its item, would outlive its deadline.
// Its msg id is derived from the restart, so a redelivered restart starts
// no second watch, while a later restart starts its own. (The first run's
// watch may still be alive, if it has not looked at the record since the
// job ended: two watches then, which costs checks but no harm.)
func (p *Processor) restartDeadlineTimer(rec *jobsv1.Job, run int32) outMsg {
	return p.runDeadlineTimer(rec, max(run, 1))
}

func (p *Processor) runDeadlineTimer(rec *jobsv1.Job, run int32) outMsg {
	return timerMsg(rec.GetId(), 0, run, 0, min(rec.GetDeadline().AsTime().Sub(p.cfg.Now()), deadlineRecheck))
}

// attemptTimer is the timer of rec's current attempt, which is RUNNING: its
// first check is due at the earliest when HandleTimer could find it lost,
// timed out or past its deadline, from what rec says now (later signs of
// life only push that back).
func (p *Processor) attemptTimer(ctx context.Context, rec *jobsv1.Job) outMsg {
	now := p.cfg.Now()
	cur := jobstate.Current(rec)
	var seen time.Time
	for _, t := range []*timestamppb.Timestamp{cur.GetStartTime(), cur.GetDispatchTime(), rec.GetUpdateTime()} {
		if t != nil && t.AsTime().After(seen) {
			seen = t.AsTime()
		}
	}
	first := min(p.cfg.TimerInterval, p.cfg.HeartbeatTimeout-now.Sub(seen))
	if dl := rec.GetDeadline(); dl != nil {
		first = min(first, dl.AsTime().Sub(now))
	}
	if timeout := effectiveTimeout(rec, p.profile(ctx, rec.GetProfile())); timeout > 0 && cur.GetStartTime() != nil {
		first = min(first, cur.GetStartTime().AsTime().Add(timeout).Sub(now))
	}
	return timerMsg(rec.GetId(), cur.GetAttempt(), 0, 0, first)
}

// untilFirstCheck is how long msg, a timer, has still to wait for its first
// check (0: check now). Its age is the stream's timestamp against this
// clock; should this clock lag the server's, the wait is still never more
// than the whole first delay.
func (p *Processor) untilFirstCheck(msg jetstream.Msg) time.Duration {
	first, err := time.ParseDuration(msg.Headers().Get(headerFirstCheck))
	if err != nil || first <= 0 {
		return 0
	}
	md, err := msg.Metadata()
	if err != nil {
		return 0
	}
	return min(first-p.cfg.Now().Sub(md.Timestamp), first)
}

// timerMsgID is the msg id of generation gen of a timer of attempt (of
// run, for a deadline watch started by a restart): "timer-<job>-<attempt>",
// then "-run<run>" for a restart's deadline watch, then "-r<gen>" for a
// renewal. Generation 0's of run 0 is what it was before timers were
// renewed.
func timerMsgID(id string, attempt, run int32, gen uint64) string {
	base := "timer-" + id + "-" + strconv.Itoa(int(attempt))
	if run > 0 {
		base += "-run" + strconv.Itoa(int(run))
	}
	if gen == 0 {
		return base
	}
	return base + "-r" + strconv.FormatUint(gen, 10)
}

// timerGeneration is the generation of msg, a timer (0 without the header,
// or with one that does not parse).
func timerGeneration(msg jetstream.Msg) uint64 {
	gen, _ := strconv.ParseUint(msg.Headers().Get(headerGeneration), 10, 64)
	return gen
}

// timerRun is the run of msg, a timer (0 without the header, or with one
// that does not parse).
func timerRun(msg jetstream.Msg) int32 {
	run, _ := strconv.ParseInt(msg.Headers().Get(headerRun), 10, 32)
	return int32(max(run, 0))
}

// rearmError asks HandleTimer to re-arm the timer, which has nothing to
// do for at least after: not a failure, only the delay.
type rearmError struct{ after time.Duration }

func (e rearmError) Error() string { return "timer re-armed for " + e.after.String() }

func rearm(d time.Duration) error { return rearmError{after: d} }

// HandleTimer checks one attempt of a job (or, for attempt 0, its
// deadline): deadline and timeout expiry, a worker that stopped
// heart-beating, and the dispatch of a retry once its backoff is over. A
// timer to re-arm that is getting old is renewed instead.
func (p *Processor) HandleTimer(ctx context.Context, msg jetstream.Msg) error {
	var t eventsv1.ExecutionTimer
	if err := bus.Decode(msg.Data(), &t); err != nil {
		return err
	}
	if err := validID(t.GetJobId()); err != nil {
		return bus.Permanent(fmt.Errorf("timer: %w", err))
	}
	err := p.checkTimer(ctx, msg, &t)
	var r rearmError
	if !errors.As(err, &r) {
		return err
	}
	after := max(r.after, 10*time.Millisecond)
	if p.timerAge(msg) >= p.cfg.TimerRenewAge {
		return p.renewTimer(ctx, msg, &t, after)
	}
	// Never longer than the renewal age, so that no timer outlives it by
	// more than that before it is renewed.
	return bus.RetryAfter(min(after, p.cfg.TimerRenewAge), r)
}

// timerAge is how long ago msg, a timer, was published (0 if unknown), by
// the stream's timestamp against this clock.
func (p *Processor) timerAge(msg jetstream.Msg) time.Duration {
	md, err := msg.Metadata()
	if err != nil {
		return 0
	}
	return p.cfg.Now().Sub(md.Timestamp)
}

// renewTimer replaces msg, an old timer t with nothing to do for after,
// with the next generation of it, first checked after that long: it
// publishes the new one, and its nil result acks msg. In that order, so
// that a crash in between leaves two timers rather than none; and msg,
// redelivered, publishes the same generation again, which the stream
// drops as a duplicate (the redelivery comes an AckWait later, well within
// the duplicate window). Should the publish fail, msg stays, re-armed as
// it was, to be renewed at its next check. The renewal keeps msg's run, so
// two runs' deadline watches renew under msg ids of their own.
func (p *Processor) renewTimer(ctx context.Context, msg jetstream.Msg, t *eventsv1.ExecutionTimer, after time.Duration) error {
	gen := timerGeneration(msg) + 1
	if _, err := p.publishAll(ctx, timerMsg(t.GetJobId(), t.GetAttempt(), timerRun(msg), gen, after)); err != nil {
		slog.WarnContext(ctx, "renew timer", "job_id", t.GetJobId(), "attempt", t.GetAttempt(), "generation", gen, "err", err)
		return bus.RetryAfter(min(after, p.cfg.TimerRenewAge), fmt.Errorf("renew timer of job %s attempt %d: %w", t.GetJobId(), t.GetAttempt(), err))
	}
	slog.DebugContext(ctx, "timer renewed", "job_id", t.GetJobId(), "attempt", t.GetAttempt(), "generation", gen)
	return nil
}

// checkTimer does HandleTimer's checks of t; rearmError when the timer is to
// stay.
func (p *Processor) checkTimer(ctx context.Context, msg jetstream.Msg, t *eventsv1.ExecutionTimer) error {
	id := t.GetJobId()
	// Most timers meet a job that is over or not due yet: neither needs the
	// record read.
	if n, ok := p.store.endedAt(id); ok && t.GetAttempt() > 0 && t.GetAttempt() <= n {
		return nil // that attempt is over for good
	}
	if wait := p.untilFirstCheck(msg); wait > 0 {
		return rearm(wait)
	}
	rec, _, err := p.store.get(ctx, id)
	if err != nil {
		return err
	}
	if rec == nil || jobstate.IsTerminal(rec.GetStatus()) {
		return nil
	}
	now := p.cfg.Now()
	n := int32(len(rec.GetExecutions()))
	if dl := rec.GetDeadline(); dl != nil && !now.Before(dl.AsTime()) {
		return p.expire(ctx, id, 0, record.DeadlinePassed(dl.AsTime()))
	}
	next := p.cfg.TimerInterval
	if dl := rec.GetDeadline(); dl != nil {
		next = min(next, dl.AsTime().Sub(now))
	}
	if t.GetAttempt() == 0 {
		if rec.GetDeadline() == nil {
			return nil
		}
		// The deadline watch sleeps until the deadline (re-checked hourly).
		return rearm(min(rec.GetDeadline().AsTime().Sub(now), deadlineRecheck))
	}
	if t.GetAttempt() < n {
		if t.GetAttempt() == n-1 && !jobstate.Current(rec).GetRestarted() {
			// This timer dispatched the retry (a restart's attempt is
			// its restart's to dispatch). Should the retry's work item
			// have failed to go out, only this timer, redelivered, is
			// left to send it: the retry gets a timer of its own only
			// once its worker reports.
			return p.ensureWork(ctx, rec)
		}
		return nil // a later attempt has its own timer
	}
	switch rec.GetStatus() {
	case jobsv1.JobStatus_JOB_STATUS_QUEUED:
		// Requeued after this attempt lost its worker: dispatch the retry
		// once its backoff is over. The retry's own timer takes over.
		at := record.RetryAt(rec, p.cfg.RetryBackoff)
		if wait := at.Sub(now); wait > 0 {
			return rearm(min(wait, next))
		}
		// The lost attempt's item must not come back to a worker (its
		// redelivery after the ack wait would run it again).
		if err := p.withdrawAttempt(ctx, jobstate.Current(rec).GetService(), id, jobstate.Current(rec).GetAttempt()); err != nil {
			return err
		}
		if err := p.announce(ctx, rec); err != nil {
			return err
		}
		return p.dispatch(ctx, rec)
	case jobsv1.JobStatus_JOB_STATUS_RUNNING:
	default:
		return rearm(next)
	}

	cur := jobstate.Current(rec)
	prof := p.profile(ctx, rec.GetProfile())
	if timeout := effectiveTimeout(rec, prof); timeout > 0 && cur.GetStartTime() != nil {
		left := cur.GetStartTime().AsTime().Add(timeout).Sub(now)
		if left <= 0 {
			return p.expire(ctx, id, cur.GetAttempt(), record.TimeoutPassed(timeout))
		}
		next = min(next, left)
	}
	seen, err := p.lastSeen(ctx, rec)
	if err != nil {
		return err
	}
	silent := now.Sub(seen)
	if silent >= p.cfg.HeartbeatTimeout {
		return p.loseWorker(ctx, rec, cur.GetAttempt(), prof.GetMaxAttempts(),
			fmt.Sprintf("no heartbeat for %s", silent.Round(time.Millisecond)))
	}
	return rearm(min(next, p.cfg.HeartbeatTimeout-silent))
}

// effectiveTimeout is the job's own timeout, else its profile's default.
func effectiveTimeout(rec *jobsv1.Job, prof *registryv1.JobProfile) time.Duration {
	if d := rec.GetTimeout().AsDuration(); d > 0 {
		return d
	}
	return prof.GetDefaultTimeout().AsDuration()
}

// profile returns rec's profile, nil when it cannot be known (the defaults
// apply: no timeout, DefaultMaxAttempts).
func (p *Processor) profile(ctx context.Context, name string) *registryv1.JobProfile {
	if p.cfg.Profiles == nil {
		return nil
	}
	prof, err := p.cfg.Profiles.Profile(ctx, name)
	if err != nil {
		slog.DebugContext(ctx, "profile lookup", "profile", name, "err", err)
		return nil
	}
	return prof
}

// lastSeen is the last sign of life of rec's current attempt: its start, its
// latest report on the stream (heartbeats included), and this process's own
// (re)connection to NATS, since reports cannot arrive while it is away.
func (p *Processor) lastSeen(ctx context.Context, rec *jobsv1.Job) (time.Time, error) {
	cur := jobstate.Current(rec)
	seen := p.connectedAt()
	if st := cur.GetStartTime(); st != nil && st.AsTime().After(seen) {
		seen = st.AsTime()
	}
	if dt := cur.GetDispatchTime(); dt != nil && dt.AsTime().After(seen) {
		seen = dt.AsTime()
	}
	// The record's update_time moves with every applied report and
	// heartbeat of the current attempt (record.Beat). The stream's last
	// report may be fresher still when the exec consumer lags behind; it
	// may also be a stale attempt's (a lost worker's item redelivered),
	// which proves nothing about this one.
	if ut := rec.GetUpdateTime(); ut != nil && ut.AsTime().After(seen) {
		seen = ut.AsTime()
	}
	m, err := p.events.GetLastMsgForSubject(ctx, bus.SubjectExecution(rec.GetId()))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return seen, nil
	case err != nil:
		return time.Time{}, fmt.Errorf("last report of job %s: %w", rec.GetId(), err)
	}
	var u eventsv1.ExecutionUpdate
	if proto.Unmarshal(m.Data, &u) == nil && u.GetAttempt() == cur.GetAttempt() && m.Time.After(seen) {
		seen = m.Time
	}
	return seen, nil
}

// expire ends a job whose timeout or deadline passed and stops its worker.
// attempt is the attempt whose timeout passed (0 for the deadline, the
// job's whatever runs).
func (p *Processor) expire(ctx context.Context, id string, attempt int32, prob *jobsv1.Problem) error {
	rec, outcome, err := p.store.update(ctx, id, func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		if rec == nil {
			return nil, record.Ignored, nil
		}
		return rec, record.Expire(rec, attempt, prob, p.cfg.Now()), nil
	})
	if err != nil {
		return fmt.Errorf("expire job %s: %w", id, err)
	}
	if outcome == record.Ignored {
		return nil
	}
	if outcome == record.Applied {
		p.metrics.failed(ctx, rec)
		slog.WarnContext(ctx, "job expired", "job_id", id, "problem", prob.GetType(), "detail", prob.GetDetail())
	}
	if err := p.withdrawEnded(ctx, rec); err != nil {
		return err
	}
	if err := p.stopWorker(ctx, rec); err != nil {
		return err
	}
	return p.announce(ctx, rec)
}

// loseWorker ends attempt as lost and requeues the job (its timer dispatches
// the retry after the backoff) or fails it when its attempts are used up.
func (p *Processor) loseWorker(ctx context.Context, rec *jobsv1.Job, attempt, maxAttempts int32, reason string) error {
	id := rec.GetId()
	rec, outcome, err := p.store.update(ctx, id, func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		if rec == nil {
			return nil, record.Ignored, nil
		}
		return rec, record.WorkerLost(rec, attempt, maxAttempts, reason, p.cfg.Now()), nil
	})
	if err != nil {
		return fmt.Errorf("lose worker of job %s: %w", id, err)
	}
	if outcome != record.Applied {
		return nil
	}
	lost := rec.GetExecutions()[attempt-1]
	if err := p.withdrawAttempt(ctx, lost.GetService(), id, attempt); err != nil {
		// Done again before the retry is dispatched, or when the job ends
		// or is restarted instead (withdrawLost).
		slog.WarnContext(ctx, "withdraw lost attempt's work item", "job_id", id, "err", err)
	}
	p.metrics.lost(ctx, rec.GetProfile())
	slog.WarnContext(ctx, "worker lost", "job_id", id, "attempt", attempt, "service", lost.GetService(),
		"instance_id", lost.GetInstanceId(), "reason", reason, "status", jobstate.Name(rec.GetStatus()))
	if err := p.announce(ctx, rec); err != nil {
		return err
	}
	if rec.GetStatus() == jobsv1.JobStatus_JOB_STATUS_QUEUED {
		// This same timer dispatches the retry after the backoff.
		return rearm(record.RetryAt(rec, p.cfg.RetryBackoff).Sub(p.cfg.Now()))
	}
	p.metrics.failed(ctx, rec)
	return nil
}

// withdrawAttempt withdraws job id's work item from service's queue, as
// withdrawWork does, if it is that of attempt (or an earlier one), never a
// later attempt's: a retry dispatched to the same service meanwhile (by a
// duplicate timer, see the top of this file) has its item on the same
// subject, and purging it would strand the retry (its item could not even
// be published again, the msg id being a duplicate). The purge stops at
// the item looked at, so one published after the look survives it too.
func (p *Processor) withdrawAttempt(ctx context.Context, service, id string, attempt int32) error {
	if service == "" {
		return nil
	}
	subject := bus.SubjectWork(service, id)
	m, err := p.work.GetLastMsgForSubject(ctx, subject)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("withdraw work item of job %s attempt %d from %s: %w", id, attempt, service, err)
	}
	var w eventsv1.WorkItem
	if err := proto.Unmarshal(m.Data, &w); err == nil && w.GetAttempt() > attempt {
		return nil // a later attempt's: the one asked for is gone already
	}
	if err := p.work.Purge(ctx, jetstream.WithPurgeSubject(subject), jetstream.WithPurgeSequence(m.Sequence+1)); err != nil {
		return fmt.Errorf("withdraw work item of job %s attempt %d from %s: %w", id, attempt, service, err)
	}
	return nil
}

// HandleRestart runs a FAILED or CANCELED job again as a new execution,
// once per restart request (see record.Restart): its message, retried
// while no service can take the job, changes nothing once that run has
// ended, however it ended. A job with a deadline has it watched again
// (restartDeadlineTimer), and one whose deadline has passed already ends
// FAILED job-deadline-passed at once instead of being dispatched to run
// for nothing.
func (p *Processor) HandleRestart(ctx context.Context, msg jetstream.Msg) error {
	var ev eventsv1.JobRestartRequested
	if err := bus.Decode(msg.Data(), &ev); err != nil {
		return err
	}
	id := ev.GetJobId()
	if err := validID(id); err != nil {
		return bus.Permanent(fmt.Errorf("restart: %w", err))
	}
	rec, outcome, err := p.store.update(ctx, id, func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		if rec == nil {
			return nil, record.Ignored, errUnknownJob
		}
		if rec.GetTenant() != ev.GetTenant() {
			return rec, record.Ignored, bus.Permanent(fmt.Errorf("tenant %q does not own it", ev.GetTenant()))
		}
		out := record.Restart(rec, ev.GetAttempts(), p.cfg.Now())
		if out == record.Applied && ev.GetLocatorRoots() != nil {
			// The restart was checked against the tenant's roots as they
			// are now: its run is held to those. A restart from an older
			// mediator, which sends none, keeps the job's.
			rec.LocatorRoots = ev.GetLocatorRoots()
		}
		return rec, out, nil
	})
	if err != nil {
		return fmt.Errorf("restart job %s: %w", id, err)
	}
	if outcome == record.Ignored {
		slog.InfoContext(ctx, "restart ignored", "job_id", id, "status", jobstate.Name(rec.GetStatus()), "attempts", ev.GetAttempts())
		return nil
	}
	if outcome == record.Applied {
		slog.InfoContext(ctx, "job restarted", "job_id", id, "attempt", record.NextAttempt(rec))
	}
	// The run before may have ended with a lost worker whose item is still
	// queued (see withdrawLost). Before the restart's item goes out, which
	// may share its subject: withdrawAttempt looks at the last item only.
	if err := p.withdrawLost(ctx, rec, ev.GetAttempts()); err != nil {
		return fmt.Errorf("restart job %s: %w", id, err)
	}
	if dl := rec.GetDeadline(); dl != nil && !jobstate.IsTerminal(rec.GetStatus()) {
		// Also on AlreadyApplied: a redelivery after a crash between the
		// record's write and the timer's publish.
		if !p.cfg.Now().Before(dl.AsTime()) {
			return p.expire(ctx, id, 0, record.DeadlinePassed(dl.AsTime()))
		}
		// After the record's write: a watch that found the job still ended
		// would stop at once. Its msg id comes from the restart, not from
		// the record, which moves on (a redelivery may find the new attempt
		// dispatched already).
		if _, err := p.publishAll(ctx, p.restartDeadlineTimer(rec, ev.GetAttempts()+1)); err != nil {
			return fmt.Errorf("start the deadline timer of restarted job %s: %w", id, err)
		}
	}
	return p.advance(ctx, rec)
}
