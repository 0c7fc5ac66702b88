package jobapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/nats-io/nats.go/jetstream"
)

// A restart is two writes, the job record (back to QUEUED) and its
// announcement (JobRestartRequested), and a mediator may die between them,
// or be told the announcement failed when it was stored. Before either,
// RestartJob stores a restart check on subjectRestartCheck: the request
// (its JobRestartRequested, the revision it is applied on in a header),
// which the mediator's own durable consumer takes up once MinAge old and
// settles whatever happened to the two writes (checkRestart). The sweep
// cannot find such a job itself: it reads the jobs bucket's write headers
// only, and a restart's write looks like any status update.
const (
	subjectRestartCheck = "medius.events.job.restart-check"
	// DurableRestartCheck is the mediator's consumer of restart checks;
	// replicas share it, so one of them settles each.
	DurableRestartCheck = "mediator-restart-check"
	// headerRestartRevision carries the job record's revision a restart is
	// applied on (decimal).
	headerRestartRevision = "Medius-Restart-Revision"
)

// restartCheckConcurrency is how many checks a replica settles at once:
// restarts are rare and each check is a few reads.
const restartCheckConcurrency = 4

// fenceTries bounds the rounds of checkRestart racing other writers of the
// record before the check is handed back for redelivery.
const fenceTries = 3

// publishRestartCheck stores the check of the restart ev applied on revision
// rev of its job's record. Its msg id names the request as the announcement
// does, so a publish tried again, or a restart asked twice on the same
// revision (one of which loses the record's compare-and-set), is one check.
func (s *Server) publishRestartCheck(ctx context.Context, ev *eventsv1.JobRestartRequested, rev uint64) error {
	msg, err := bus.NewMsg(ctx, subjectRestartCheck, ev)
	if err != nil {
		return err
	}
	msg.Header.Set(headerRestartRevision, strconv.FormatUint(rev, 10))
	id := "restart-check-" + ev.GetJobId() + "-" + strconv.Itoa(int(ev.GetAttempts())) + "-rev" + strconv.FormatUint(rev, 10)
	if _, err := s.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id)); err != nil {
		return fmt.Errorf("publish %s: %w", subjectRestartCheck, err)
	}
	return nil
}

// checkRestarts settles the restart checks of every replica's RestartJob
// (see subjectRestartCheck) once minAge old, until ctx ends.
func (s *Server) checkRestarts(ctx context.Context, minAge time.Duration) error {
	cfg := bus.ConsumerConfig{Stream: bus.StreamEvents, Durable: DurableRestartCheck, Filter: []string{subjectRestartCheck},
		Concurrency: restartCheckConcurrency}
	err := bus.Consume(ctx, s.js, cfg, func(ctx context.Context, msg jetstream.Msg) error {
		return s.checkRestart(ctx, msg, minAge)
	})
	if ctx.Err() != nil {
		return nil // stopped while setting up
	}
	return err
}

// errRestartTooYoung defers a restart check whose RestartJob may still be
// running.
var errRestartTooYoung = errors.New("restart check not due yet")

// checkRestart settles one restart: job J with A executions, applied on
// revision R of its record. Until the check is minAge old, RestartJob may
// still be writing, and it is deferred. Then:
//
//   - the record is still at R: the restart's write was never stored, or is
//     still on its way (a write whose answer was lost may land later). The
//     record is written again unchanged on R, so that such a write fails
//     its compare-and-set: the restart, which its client was told failed,
//     never happens, rather than leaving a QUEUED job nobody announces.
//   - the record is QUEUED and the processor's record has no more than A
//     executions (it adds the restart's at once, so it has not applied it):
//     the announcement is published again, under its own msg id, so the
//     events stream keeps one if the first was stored after all, and the
//     processor applies a restart once per count of executions anyway.
//   - anything else (the processor applied it, the job ended again or is
//     gone): nothing to do.
//
// A check is acknowledged once settled, so it re-publishes an announcement
// at most once (again only if the acknowledgement is lost, under the same
// msg id); it is retried, with the consumer's backoff, only while the stores
// fail.
func (s *Server) checkRestart(ctx context.Context, msg jetstream.Msg, minAge time.Duration) error {
	md, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("restart check: %w", err)
	}
	if age := s.now().Sub(md.Timestamp); age < minAge {
		return bus.RetryAfter(minAge-age, errRestartTooYoung)
	}
	var ev eventsv1.JobRestartRequested
	if err := bus.Decode(msg.Data(), &ev); err != nil {
		return err
	}
	id, attempts := ev.GetJobId(), ev.GetAttempts()
	rev, err := strconv.ParseUint(msg.Headers().Get(headerRestartRevision), 10, 64)
	if err != nil || id == "" {
		return bus.Permanent(fmt.Errorf("restart check of job %q: no revision: %w", id, err))
	}
	for range fenceTries {
		job, cur, err := s.store.Get(ctx, id)
		if errors.Is(err, jobstore.ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("restart check of job %s: %w", id, err)
		}
		if cur == rev {
			_, err := s.store.Update(ctx, job, rev)
			if errors.Is(err, jobstore.ErrConflict) {
				continue // written meanwhile: look again
			}
			if err != nil {
				return fmt.Errorf("restart check of job %s: fence: %w", id, err)
			}
			slog.WarnContext(ctx, "restart never written; later writes of it fenced off", "job", id, "status", jobstate.Name(job.GetStatus()))
			return nil
		}
		if job.GetStatus() != jobsv1.JobStatus_JOB_STATUS_QUEUED {
			return nil
		}
		ex, ok, err := s.executions(ctx, id)
		if err != nil {
			return fmt.Errorf("restart check of job %s: %w", id, err)
		}
		if ok && int32(len(ex)) > attempts {
			return nil // applied by the processor
		}
		if err := bus.Publish(ctx, s.js, bus.SubjectJobRestart, restartMsgID(id, attempts, rev), &ev); err != nil {
			return fmt.Errorf("restart check of job %s: %w", id, err)
		}
		slog.InfoContext(ctx, "restart announced again", "job", id, "attempt", attempts+1)
		return nil
	}
	return fmt.Errorf("restart check of job %s: %w", id, jobstore.ErrConflict)
}
