// Package statusconsumer applies the processor's JobStatusChanged events to
// the mediator's job records. Events may arrive late, twice or out of order
// (redelivery, retries on another worker): a terminal job never moves, a job
// only moves forward within an attempt, and a newer attempt may restart it.
// A restarted job's record holds the execution of the attempt its restart
// runs, so the earlier runs' news (attempts before it, or an end naming no
// attempt) never moves it.
package statusconsumer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Durable is the consumer name (docs/internals.md).
const Durable = "mediator-status"

// unknownJobDeliveries is how often an event about an unknown job is tried
// before it is dropped: a job record is stored before the processor hears of
// it, so an unknown job is not expected to appear later.
const unknownJobDeliveries = 5

// concurrency is how many jobs' events a replica applies at once.
const concurrency = 64

// laneDepth is how many events wait for each of the concurrency lanes. Under
// backlog the events of a job waiting together are applied with one write,
// so the deeper the lanes the fewer writes; concurrency × laneDepth events
// are held at most (a few MB), and they are handed back on a crash anyway.
const laneDepth = 64

// casAttempts bounds in-process retries of a conflicting update before the
// message is handed back for redelivery.
const casAttempts = 5

// Consumer applies status events to job records.
type Consumer struct {
	store      *jobstore.Store
	now        func() time.Time
	onTerminal []Hook
	onChange   []Hook
}

// Hook is told about a job. It must be idempotent: it runs again when an
// event is redelivered.
type Hook func(ctx context.Context, job *jobsv1.Job) error

// New applies events to store's records.
func New(store *jobstore.Store) *Consumer { return &Consumer{store: store, now: time.Now} }

// OnTerminal adds h, run for a job that reached a terminal state (quota
// release, usage). It also runs when an event finds the job already terminal,
// so a crash between the update and the hook is healed by redelivery; a hook
// error hands the event back for redelivery.
func (c *Consumer) OnTerminal(h Hook) { c.onTerminal = append(c.onTerminal, h) }

// OnChange adds h, run after each applied change (notifications). An error
// telling it the state the events leave the job in, when terminal, hands
// the events back for redelivery; the redelivered event that ended the job
// finds it ended already and tells h again. So a process dying between
// ending a job and telling h, or h failing then, does not lose the end: h
// must take a repeat (the notifier's msg id does). Other errors are logged:
// a job's next state, or the same one redelivered, applies again and tells
// h then.
func (c *Consumer) OnChange(h Hook) { c.onChange = append(c.onChange, h) }

func (c *Consumer) terminal(ctx context.Context, job *jobsv1.Job) error {
	if !jobstate.IsTerminal(job.GetStatus()) {
		return nil
	}
	var errs []error
	for _, h := range c.onTerminal {
		errs = append(errs, h(ctx, job))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("terminal hooks of job %s: %w", job.GetId(), err)
	}
	return nil
}

// Run consumes until ctx ends.
func (c *Consumer) Run(ctx context.Context, js jetstream.JetStream) error {
	return bus.ConsumeBatches(ctx, js, bus.ConsumerConfig{
		Stream:  bus.StreamEvents,
		Durable: Durable,
		Filter:  []string{bus.SubjectJobStatusAll},
		// A job's events in order, many jobs at once: each event is a
		// round trip or two, and a terminal one an etcd write (usage).
		// Under backlog a job's waiting events come together and are
		// applied with one write (see Apply).
		Concurrency:   concurrency,
		LaneDepth:     laneDepth,
		MaxAckPending: concurrency * laneDepth,
	}, c.handle)
}

// handle applies one job's events: its subject's messages, oldest first.
func (c *Consumer) handle(ctx context.Context, msgs []jetstream.Msg) error {
	evs := make([]*eventsv1.JobStatusChanged, 0, len(msgs))
	for _, msg := range msgs {
		ev := &eventsv1.JobStatusChanged{}
		if err := bus.Decode(msg.Data(), ev); err != nil {
			if len(msgs) == 1 {
				return err
			}
			// Its companions are fine: apply them, and let it go with
			// them (it could never be applied).
			slog.ErrorContext(ctx, "status event dropped", "subject", msg.Subject(), "err", err)
			continue
		}
		evs = append(evs, ev)
	}
	var errs []error
	for _, job := range byJob(evs) {
		errs = append(errs, c.Apply(ctx, job...))
	}
	err := errors.Join(errs...)
	if errors.Is(err, jobstore.ErrNotFound) && len(errs) == 1 {
		// Dropped once every event of the unknown job in hand has been
		// tried often enough.
		delivered := uint64(unknownJobDeliveries)
		for _, msg := range msgs {
			md, mdErr := msg.Metadata()
			if mdErr != nil {
				return err
			}
			delivered = min(delivered, md.NumDelivered)
		}
		if delivered >= unknownJobDeliveries {
			return bus.Permanent(err)
		}
	}
	return err
}

// byJob groups evs by job, keeping their order. A subject carries one
// job's events, so this is one group unless a publisher mislabelled one.
func byJob(evs []*eventsv1.JobStatusChanged) [][]*eventsv1.JobStatusChanged {
	var groups [][]*eventsv1.JobStatusChanged
	at := map[string]int{}
	for _, ev := range evs {
		i, ok := at[ev.GetJobId()]
		if !ok {
			i = len(groups)
			at[ev.GetJobId()] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], ev)
	}
	return groups
}

// Apply applies evs, events of one job in the order they were published, to
// its record with one write. It returns nil when they were applied or are to
// be ignored (stale, duplicate, terminal job), an error wrapping
// jobstore.ErrNotFound for an unknown job, and any other error when they
// should be tried again.
//
// Applying several events at once writes what applying them one by one
// would have left, since each is applied in turn to the record in hand; the
// change hooks are told each state in turn too. Only watchers of the record
// (jobstore.Watch) miss the intermediate states, which were never stored.
func (c *Consumer) Apply(ctx context.Context, evs ...*eventsv1.JobStatusChanged) error {
	if len(evs) == 0 {
		return nil
	}
	id := evs[0].GetJobId()
	// The record this process last read or wrote spares a read; it may be
	// stale, but only a write on its revision relies on it, and that fails
	// if the record changed meanwhile.
	fresh := false
	for range casAttempts {
		var job *jobsv1.Job
		var rev uint64
		var cached bool
		var err error
		if fresh {
			job, rev, err = c.store.Get(ctx, id)
		} else {
			job, rev, cached, err = c.store.GetCached(ctx, id)
		}
		if err != nil {
			return fmt.Errorf("apply status to job %s: %w", id, err)
		}
		states, filled := c.applyAll(job, evs)
		if states == nil && !filled {
			if cached {
				// Nothing verifies a decision not to write: the job may
				// have moved on elsewhere (a retry started by another
				// replica) so that an event ignored here applies to it.
				fresh = true
				continue
			}
			slog.DebugContext(ctx, "status event ignored", "job", id, "status", jobstate.Name(evs[len(evs)-1].GetStatus()),
				"events", len(evs), "current", jobstate.Name(job.GetStatus()), "attempt", evs[len(evs)-1].GetExecution().GetAttempt())
			var told error
			if endedBy(job, evs[len(evs)-1]) {
				// The event that ended the job, again: the change hooks
				// may not have been told (see OnChange).
				told = c.tell(ctx, job, true)
			}
			return errors.Join(c.terminal(ctx, job), told)
		}
		_, err = c.store.Update(ctx, job, rev)
		if errors.Is(err, jobstore.ErrConflict) {
			fresh = true
			continue
		}
		if err != nil {
			return fmt.Errorf("apply status to job %s: %w", id, err)
		}
		slog.DebugContext(ctx, "job status applied", "job", id, "status", jobstate.Name(job.GetStatus()),
			"progress", job.GetProgress(), "events", len(evs), "start_taken", filled)
		// A start taken alone changed no state: nothing to tell.
		var told error
		for i, state := range states {
			if err := c.tell(ctx, state, i == len(states)-1); err != nil {
				told = err
			}
		}
		return errors.Join(c.terminal(ctx, job), told)
	}
	return fmt.Errorf("apply status to job %s: %w", id, jobstore.ErrConflict)
}

// tell runs the change hooks on state, the last the events leave the job in
// if last. It returns their error only for a last, terminal state, which
// only a redelivery can tell them again (see OnChange); others are logged.
func (c *Consumer) tell(ctx context.Context, state *jobsv1.Job, last bool) error {
	var errs []error
	for _, h := range c.onChange {
		if err := h(ctx, state); err != nil {
			slog.WarnContext(ctx, "job change hook", "job", state.GetId(), "status", jobstate.Name(state.GetStatus()), "err", err)
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil && last && jobstate.IsTerminal(state.GetStatus()) {
		return fmt.Errorf("change hooks of job %s %s: %w", state.GetId(), jobstate.Name(state.GetStatus()), err)
	}
	return nil
}

// endedBy reports whether ev announces the end job is in: its status, of
// the attempt job's end belongs to (none when it never had one).
func endedBy(job *jobsv1.Job, ev *eventsv1.JobStatusChanged) bool {
	return jobstate.IsTerminal(job.GetStatus()) && ev.GetStatus() == job.GetStatus() &&
		ev.GetExecution().GetAttempt() == jobstate.LatestAttempt(job)
}

// applyAll applies evs in turn to job and returns the state after each one
// that applied (the last is job itself), nil if none did; and whether one
// gave job's ended execution its start without changing its state
// (takeStart).
func (c *Consumer) applyAll(job *jobsv1.Job, evs []*eventsv1.JobStatusChanged) (states []*jobsv1.Job, filled bool) {
	now := c.now()
	for _, ev := range evs {
		if takeStart(job, ev) {
			filled = true
			continue
		}
		// apply changes job only when it applies, so the state the last
		// applied event left is what job is before the next one; kept
		// aside for the change hooks, if there are any.
		var before *jobsv1.Job
		if len(states) > 0 && len(c.onChange) > 0 {
			before = proto.Clone(job).(*jobsv1.Job)
		}
		if !apply(job, ev, now) {
			continue
		}
		if before != nil {
			states[len(states)-1] = before
		}
		states = append(states, job)
	}
	return states, filled
}

// takeStart gives job, ended, the start and instance its latest execution
// lacks from ev, the announcement of that same end whose execution has
// them; it reports whether it did. Nothing else of job changes: a terminal
// job never moves.
//
// A worker reports a job RUNNING only once it has run for its running
// delay (100ms), so a job canceled or past its deadline within it is
// ended by the processor with its execution SCHEDULED, without a start,
// and announced so. The worker's report that follows gives the
// processor's record the start, and the processor announces the end again
// with it, once (see the processor's announceStart).
func takeStart(job *jobsv1.Job, ev *eventsv1.JobStatusChanged) bool {
	ex := ev.GetExecution()
	if !jobstate.IsTerminal(job.GetStatus()) || ev.GetStatus() != job.GetStatus() || ex.GetAttempt() == 0 ||
		ex.GetAttempt() != jobstate.LatestAttempt(job) || !ex.GetStartTime().IsValid() {
		return false
	}
	for _, old := range job.GetExecutions() {
		if old.GetAttempt() != ex.GetAttempt() {
			continue
		}
		if old.GetStartTime() != nil || old.GetStatus() != ex.GetStatus() || !jobstate.IsTerminal(old.GetStatus()) {
			return false
		}
		old.StartTime = ex.GetStartTime()
		if old.GetInstanceId() == "" {
			old.InstanceId = ex.GetInstanceId()
		}
		return true
	}
	return false
}

// apply changes job as ev says, if ev may move it; it reports whether it did.
func apply(job *jobsv1.Job, ev *eventsv1.JobStatusChanged, now time.Time) bool {
	to := ev.GetStatus()
	if jobstate.IsTerminal(job.GetStatus()) || to == jobsv1.JobStatus_JOB_STATUS_UNSPECIFIED {
		return false
	}
	attempt, current := ev.GetExecution().GetAttempt(), jobstate.LatestAttempt(job)
	if attempt > 0 && attempt < current {
		return false // an earlier attempt's late news
	}
	if attempt == 0 && current > 0 && jobstate.IsTerminal(to) {
		// The end of a run that never dispatched an attempt: the first
		// one (no service, canceled or past its deadline while queued),
		// late or redelivered after a restart, which gave the record the
		// execution of its attempt (jobapi.RestartJob). Once a job has an
		// attempt, the processor names one in every end it announces (its
		// record has the execution too: a restart adds it at once), so
		// such an end is never the current run's.
		return false
	}
	ex := ev.GetExecution()
	if attempt > 0 && attempt == current && !jobstate.IsTerminal(ex.GetStatus()) && attemptEnded(job, attempt) {
		return false // news of an attempt from before it ended (lost its worker)
	}
	if attempt == 0 && current > 0 && to == jobsv1.JobStatus_JOB_STATUS_QUEUED && attemptEnded(job, current) {
		// A QUEUED naming no attempt is a restart's, announced before its
		// run was dispatched; the record's latest attempt has since run
		// and ended, and the job waits for its retry: late news.
		return false
	}
	// A newer attempt is a retry: the processor requeued the job, which
	// may move it back (RUNNING -> QUEUED) and restart its progress. So
	// does the current attempt's end with the job QUEUED: it lost its
	// worker, and the job waits for the retry.
	retry := attempt > current
	requeue := to == jobsv1.JobStatus_JOB_STATUS_QUEUED && attempt > 0 && attempt == current && jobstate.IsTerminal(ex.GetStatus())
	if !retry && !requeue {
		if !jobstate.CanTransition(job.GetStatus(), to) {
			return false
		}
		if to == job.GetStatus() && ev.GetProgress() < job.GetProgress() {
			return false
		}
	}

	job.Status = to
	job.Progress = min(max(ev.GetProgress(), 0), 100)
	if to == jobsv1.JobStatus_JOB_STATUS_COMPLETED {
		job.Progress = 100
	}
	job.StatusMessage = ev.GetStatusMessage()
	if ev.GetOutput() != nil {
		job.Output = ev.GetOutput()
	}
	// The error describes the latest state: a retry clears the previous
	// attempt's failure.
	job.Error = ev.GetError()
	if ev.GetVerifiedQuantity() != 0 {
		job.VerifiedQuantity = ev.GetVerifiedQuantity()
	}
	job.UpdateTime = timestamppb.New(now)
	if jobstate.IsTerminal(to) {
		job.EndTime = ev.GetTime()
		if job.EndTime == nil {
			job.EndTime = timestamppb.New(now)
		}
	}
	if ex.GetAttempt() > 0 {
		upsertExecution(job, ex)
	}
	// The attempt before ended as this one began, or before: one moved off
	// a service with no live instance left ends FAILED as the next is
	// SCHEDULED, and no event of its own says so. Only an ended copy is
	// taken, so it never moves an execution back. It replaces whatever the
	// record has, ended or not: once a later attempt exists the processor
	// never changes an execution (an end is final, and only the current one
	// takes a worker's start), so every event carries the same copy, and a
	// record's own can only be older (a restart's QUEUED, a SCHEDULED never
	// told it ended, an end without the start taken after).
	if prev := ev.GetPreviousExecution(); prev.GetAttempt() > 0 && prev.GetAttempt() < ex.GetAttempt() &&
		jobstate.IsTerminal(prev.GetStatus()) {
		upsertExecution(job, prev)
	}
	return true
}

// attemptEnded reports whether job's execution of attempt has ended.
func attemptEnded(job *jobsv1.Job, attempt int32) bool {
	for _, ex := range job.GetExecutions() {
		if ex.GetAttempt() == attempt {
			return jobstate.IsTerminal(ex.GetStatus())
		}
	}
	return false
}

// upsertExecution replaces the execution of ex's attempt, keeping executions
// ordered by attempt.
func upsertExecution(job *jobsv1.Job, ex *jobsv1.Execution) {
	for i, old := range job.Executions {
		if old.GetAttempt() == ex.GetAttempt() {
			job.Executions[i] = ex
			return
		}
	}
	job.Executions = append(job.Executions, ex)
	slices.SortFunc(job.Executions, func(a, b *jobsv1.Execution) int { return cmp.Compare(a.GetAttempt(), b.GetAttempt()) })
}
