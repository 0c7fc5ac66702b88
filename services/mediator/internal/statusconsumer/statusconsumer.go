// Package statusconsumer applies the processor's JobStatusChanged events to
// the mediator's job records. Events may arrive late, twice or out of order
// (redelivery, retries on another worker): a terminal job never moves, a job
// only moves forward within an attempt, and a newer attempt may restart it.
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

// OnChange adds h, run after each applied change (notifications, watchers).
// Its errors are logged, not retried: it must keep its own delivery promise.
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
	return bus.Consume(ctx, js, bus.ConsumerConfig{
		Stream:  bus.StreamEvents,
		Durable: Durable,
		Filter:  []string{bus.SubjectJobStatusAll},
		// A job's events in order (so watchers and webhooks see each
		// status), many jobs at once: each event is a few round trips, and
		// a terminal one an etcd write (usage).
		Concurrency:      concurrency,
		OrderedBySubject: true,
	}, c.handle)
}

func (c *Consumer) handle(ctx context.Context, msg jetstream.Msg) error {
	ev := &eventsv1.JobStatusChanged{}
	if err := bus.Decode(msg.Data(), ev); err != nil {
		return err
	}
	err := c.Apply(ctx, ev)
	if errors.Is(err, jobstore.ErrNotFound) {
		if md, mdErr := msg.Metadata(); mdErr == nil && md.NumDelivered >= unknownJobDeliveries {
			return bus.Permanent(err)
		}
	}
	return err
}

// Apply applies ev to its job record. It returns nil when the event was
// applied or is to be ignored (stale, duplicate, terminal job), an error
// wrapping jobstore.ErrNotFound for an unknown job, and any other error when
// it should be tried again.
func (c *Consumer) Apply(ctx context.Context, ev *eventsv1.JobStatusChanged) error {
	id := ev.GetJobId()
	for range casAttempts {
		job, rev, err := c.store.Get(ctx, id)
		if err != nil {
			return fmt.Errorf("apply status to job %s: %w", id, err)
		}
		if !apply(job, ev, c.now()) {
			slog.DebugContext(ctx, "status event ignored", "job", id, "status", jobstate.Name(ev.GetStatus()),
				"current", jobstate.Name(job.GetStatus()), "attempt", ev.GetExecution().GetAttempt())
			return c.terminal(ctx, job)
		}
		_, err = c.store.Update(ctx, job, rev)
		if errors.Is(err, jobstore.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("apply status to job %s: %w", id, err)
		}
		slog.DebugContext(ctx, "job status applied", "job", id, "status", jobstate.Name(job.GetStatus()), "progress", job.GetProgress())
		for _, h := range c.onChange {
			if err := h(ctx, job); err != nil {
				slog.WarnContext(ctx, "job change hook", "job", id, "err", err)
			}
		}
		return c.terminal(ctx, job)
	}
	return fmt.Errorf("apply status to job %s: %w", id, jobstore.ErrConflict)
}

// apply changes job as ev says, if ev may move it; it reports whether it did.
func apply(job *jobsv1.Job, ev *eventsv1.JobStatusChanged, now time.Time) bool {
	to := ev.GetStatus()
	if jobstate.IsTerminal(job.GetStatus()) || to == jobsv1.JobStatus_JOB_STATUS_UNSPECIFIED {
		return false
	}
	attempt, current := ev.GetExecution().GetAttempt(), latestAttempt(job)
	if attempt > 0 && attempt < current {
		return false // an earlier attempt's late news
	}
	// A newer attempt is a retry: the processor requeued the job, which
	// may move it back (RUNNING -> QUEUED) and restart its progress.
	retry := attempt > current
	if !retry {
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
	if ex := ev.GetExecution(); ex.GetAttempt() > 0 {
		upsertExecution(job, ex)
	}
	return true
}

func latestAttempt(job *jobsv1.Job) int32 {
	var n int32
	for _, ex := range job.GetExecutions() {
		n = max(n, ex.GetAttempt())
	}
	return n
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
