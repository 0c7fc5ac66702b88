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
// with a deadline one more, attempt 0). The timer consumer handles it and
// naks it with the delay until its next check, so timers are persisted by
// JetStream (a processor crash loses none), shared by the replicas like any
// other message (no election needed: every check is a compare-and-set on the
// record, safe when two replicas race) and cost nothing for jobs waiting in
// a work queue. A timer is acked once its attempt is over.
const (
	DurableTimer = "processor-timer"
	subjectTimer = "medius.events.timer."
	// timerMaxAckPending bounds the timers pending at once (one per running
	// attempt, plus deadlines): far above any fleet's capacity.
	timerMaxAckPending = 1 << 20
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

// timerMsg is the timer of attempt of job id (0: the deadline watch), first
// checked after first; its msg id makes a repeat a no-op.
func timerMsg(id string, attempt int32, first time.Duration) outMsg {
	return outMsg{subject: SubjectTimer(id), msgID: timerMsgID(id, attempt), m: &eventsv1.ExecutionTimer{JobId: id, Attempt: attempt},
		header: nats.Header{headerFirstCheck: []string{max(first, 0).String()}}}
}

// deadlineTimer is the timer watching rec's deadline: nothing to check
// before it (HandleTimer re-checks a far one hourly).
func (p *Processor) deadlineTimer(rec *jobsv1.Job) outMsg {
	return timerMsg(rec.GetId(), 0, min(rec.GetDeadline().AsTime().Sub(p.cfg.Now()), time.Hour))
}

// attemptTimer is the timer of rec's current attempt, which is RUNNING: its
// first check is due at the earliest when HandleTimer could find it lost,
// timed out or past its deadline, from what rec says now (later signs of
// life only push that back).
func (p *Processor) attemptTimer(ctx context.Context, rec *jobsv1.Job) outMsg {
	now := p.cfg.Now()
	cur := record.Current(rec)
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
	return timerMsg(rec.GetId(), cur.GetAttempt(), first)
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

func timerMsgID(id string, attempt int32) string {
	return "timer-" + id + "-" + strconv.Itoa(int(attempt))
}

// errTimerPending re-arms a timer: it is not an error, only the delay.
func rearm(d time.Duration) error {
	return bus.RetryAfter(max(d, 10*time.Millisecond), errors.New("timer re-armed"))
}

// HandleTimer checks one attempt of a job (or, for attempt 0, its
// deadline): deadline and timeout expiry, a worker that stopped
// heart-beating, and the dispatch of a retry once its backoff is over.
func (p *Processor) HandleTimer(ctx context.Context, msg jetstream.Msg) error {
	var t eventsv1.ExecutionTimer
	if err := bus.Decode(msg.Data(), &t); err != nil {
		return err
	}
	id := t.GetJobId()
	if err := validID(id); err != nil {
		return bus.Permanent(fmt.Errorf("timer: %w", err))
	}
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
		return p.expire(ctx, id, record.DeadlinePassed(dl.AsTime()))
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
		return rearm(min(rec.GetDeadline().AsTime().Sub(now), time.Hour))
	}
	if t.GetAttempt() < n {
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
		if err := p.withdrawWork(ctx, record.Current(rec).GetService(), id); err != nil {
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

	cur := record.Current(rec)
	prof := p.profile(ctx, rec.GetProfile())
	if timeout := effectiveTimeout(rec, prof); timeout > 0 && cur.GetStartTime() != nil {
		left := cur.GetStartTime().AsTime().Add(timeout).Sub(now)
		if left <= 0 {
			return p.expire(ctx, id, record.TimeoutPassed(timeout))
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
	cur := record.Current(rec)
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
func (p *Processor) expire(ctx context.Context, id string, prob *jobsv1.Problem) error {
	rec, outcome, err := p.store.update(ctx, id, func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		if rec == nil {
			return nil, record.Ignored, nil
		}
		return rec, record.Expire(rec, prob, p.cfg.Now()), nil
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
	if err := p.withdrawUnstarted(ctx, rec); err != nil {
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
	if err := p.withdrawWork(ctx, lost.GetService(), id); err != nil {
		// Done again before the retry is dispatched.
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

// HandleRestart runs a FAILED or CANCELED job again as a new execution.
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
		return rec, record.Restart(rec, ev.GetAttempts(), p.cfg.Now()), nil
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
	return p.advance(ctx, rec)
}
