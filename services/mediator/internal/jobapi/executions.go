package jobapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/medius-platform/medius/services/mediator/internal/quota"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// executions returns the executions of job id as the processor records them
// (every attempt, lost ones included), or nil when it has no record yet.
// The processor's record is the authority: the job record only learns of an
// attempt through status events, and a lost attempt's end is not one.
func (s *Server) executions(ctx context.Context, id string) ([]*jobsv1.Execution, bool, error) {
	kv, err := s.executionsBucket(ctx)
	if err != nil {
		return nil, false, err
	}
	e, err := kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("get executions of job %s: %w", id, err)
	}
	rec := &jobsv1.Job{}
	if err := proto.Unmarshal(e.Value(), rec); err != nil {
		return nil, false, fmt.Errorf("decode executions of job %s: %w", id, err)
	}
	return rec.GetExecutions(), true, nil
}

// executionsBucket binds the processor's bucket once: binding costs a
// stream info request, and the sweep may read thousands of records a round.
// A failed bind is tried again on the next call.
func (s *Server) executionsBucket(ctx context.Context) (jetstream.KeyValue, error) {
	s.execsMu.Lock()
	defer s.execsMu.Unlock()
	if s.execs == nil {
		kv, err := s.js.KeyValue(ctx, bus.BucketExecutions)
		if err != nil {
			return nil, fmt.Errorf("bind bucket %s: %w", bus.BucketExecutions, err)
		}
		s.execs = kv
	}
	return s.execs, nil
}

// processorAttempts is the highest attempt the processor's record of job id
// knows, 0 if it has none; false if the record cannot be read (a cancel is
// not refused for it: it then names no attempt, as before any).
func (s *Server) processorAttempts(ctx context.Context, id string) (int32, bool) {
	ex, _, err := s.executions(ctx, id)
	if err != nil {
		slog.WarnContext(ctx, "read the processor's record for a cancel", "job", id, "err", err)
		return 0, false
	}
	return jobstate.LatestAttempt(&jobsv1.Job{Executions: ex}), true
}

// ListJobExecutions implements jobsv1.JobServiceServer: one execution per
// attempt, oldest first.
func (s *Server) ListJobExecutions(ctx context.Context, req *jobsv1.ListJobExecutionsRequest) (*jobsv1.ListJobExecutionsResponse, error) {
	job, _, err := s.load(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	ex, ok, err := s.executions(ctx, job.GetId())
	if err != nil {
		return nil, storeError(ctx, err)
	}
	if !ok {
		ex = job.GetExecutions()
	}
	return &jobsv1.ListJobExecutionsResponse{Executions: ex}, nil
}

// RestartJob implements jobsv1.JobServiceServer: a FAILED or CANCELED job
// goes back to QUEUED and the processor runs it again as a new execution.
// A job whose deadline has passed is refused (FailedPrecondition,
// job-deadline-passed).
// The new run takes one of the tenant's concurrent slots, as a new job
// does, and is refused as CreateJob refuses (ResourceExhausted, 429) when
// none is free or the period's quantity is used up; the status consumer's
// release at its end gives it back. The slot is the run's own, named by
// the attempt the restart adds: the release of the run before, late,
// leaves it alone. It counts no job of the period: a job completes, and is
// billed, at most once however often it is restarted (see
// quota.Admitter.AdmitRestart).
// The job record moves first, so the processor's news of the new attempt
// finds it no longer terminal. Before it, a restart check is stored (see
// subjectRestartCheck): once the record has moved, the restart is
// accepted, since the check announces it should this process die before
// the announcement, or the announcement fail.
func (s *Server) RestartJob(ctx context.Context, req *jobsv1.RestartJobRequest) (*jobsv1.Job, error) {
	job, rev, err := s.load(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	if st := job.GetStatus(); st != jobsv1.JobStatus_JOB_STATUS_FAILED && st != jobsv1.JobStatus_JOB_STATUS_CANCELED {
		return nil, problem.FailedPrecondition("job-not-restartable",
			fmt.Sprintf("job %s is %s; only FAILED or CANCELED jobs can be restarted", job.GetId(), jobstate.Name(st)))
	}
	// Past its deadline the new run could only fail at once
	// (job-deadline-passed, from the processor): tell the client now, and
	// why, instead of accepting a restart that cannot run.
	if dl := job.GetDeadline(); dl != nil && !s.now().Before(dl.AsTime()) {
		return nil, problem.FailedPrecondition("job-deadline-passed",
			fmt.Sprintf("job %s cannot be restarted: its deadline %s has passed", job.GetId(), dl.AsTime().UTC().Format(time.RFC3339)))
	}
	// The new run reads and writes the job's locators now: they must lie
	// under the tenant's locator roots as they are now (the job may predate
	// them, or its roots have been withdrawn since), and its workers hold
	// it to those.
	roots, err := s.checkLocatorRoots(ctx, job.GetTenant(), job.GetInput(), nil)
	if err != nil {
		return nil, err
	}
	ex, ok, err := s.executions(ctx, job.GetId())
	if err != nil {
		return nil, storeError(ctx, err)
	}
	if !ok {
		ex = job.GetExecutions()
	}
	attempts := int32(len(ex))
	// The run is named by the attempt it adds, which the job's record
	// keeps: the terminal hook frees the runs up to the record's latest
	// attempt, so this one only at its own end.
	run := attempts + 1
	took := false
	if s.admit != nil {
		if took, err = s.admit.AdmitRestart(ctx, job, run); err != nil {
			return nil, admitError(ctx, job.GetId(), err)
		}
	}
	ev := &eventsv1.JobRestartRequested{JobId: job.GetId(), Tenant: job.GetTenant(), Attempts: attempts, LocatorRoots: roots}
	if err := s.publishRestartCheck(ctx, ev, rev); err != nil {
		// Nothing moved: the slot taken is not used.
		if took {
			s.releaseRun(ctx, job.GetTenant(), job.GetId(), run)
		}
		return nil, problem.Unavailable("cannot request the restart now", err)
	}
	job.Status = jobsv1.JobStatus_JOB_STATUS_QUEUED
	job.Progress = 0
	job.StatusMessage = "restarted"
	job.Error = nil
	job.Output = nil
	job.EndTime = nil
	job.VerifiedQuantity = 0
	if roots != nil {
		job.LocatorRoots = roots
	}
	job.UpdateTime = timestamppb.New(s.now())
	addRestartExecution(job, run)
	if _, err := s.store.Update(ctx, job, rev); err != nil {
		// Its check settles a write whose outcome is unknown: stored
		// (within MinAge), it announces the restart, which then runs
		// although the client was told it failed, as asked; not, it
		// fences the write off, so that it cannot land later. Its quota
		// slot is kept either way: the run holds it, or the job stays
		// ended and the quota reconciliation frees it.
		if errors.Is(err, jobstore.ErrConflict) {
			if took {
				s.releaseUnlessRestarted(ctx, job.GetTenant(), job.GetId(), run)
			}
			return nil, problem.FailedPrecondition("job-changed", fmt.Sprintf("job %s changed meanwhile; try again", job.GetId()))
		}
		return nil, storeError(ctx, fmt.Errorf("restart job %s: %w", job.GetId(), err))
	}
	// The record has moved: whatever the client does now, announce it.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackWait)
	defer cancel()
	if err := bus.Publish(pctx, s.js, bus.SubjectJobRestart, restartMsgID(job.GetId(), attempts, rev), ev); err != nil {
		// Not put back: the announcement may have been stored (an answer
		// lost), and the processor would then run a job the record says
		// ended. Its check announces it once MinAge old, under the same
		// msg id.
		slog.WarnContext(ctx, "job restarted, announcement deferred to its check", "job", job.GetId(), "err", err)
	}
	s.admitted.Add(ctx, 1, metric.WithAttributes(attribute.String("profile", job.GetProfile()), attribute.String("tenant", job.GetTenant()), attribute.Bool("restarted", true)))
	slog.InfoContext(ctx, "job restart requested", "job", job.GetId(), "attempt", run)
	return job, nil
}

// releaseUnlessRestarted gives back the quota slot a restart of job id took
// for run when its record write lost to another writer, unless that writer
// was a restart of the same job asked at the same moment, which named the
// same run and holds the slot: a run's slot is one marker, whoever took
// it. The record tells (quota.Marker.Ended): a job ended, or running as
// another run, does not use it. Should the record not be read, the slot is
// kept: the quota reconciliation frees it once the job shows it unused.
func (s *Server) releaseUnlessRestarted(ctx context.Context, tenant, id string, run int32) {
	job, _, err := s.store.Get(context.WithoutCancel(ctx), id)
	switch {
	case errors.Is(err, jobstore.ErrNotFound):
		job = nil
	case err != nil:
		slog.WarnContext(ctx, "restart refused; its quota slot left to the reconciliation", "job", id, "err", err)
		return
	}
	if !(quota.Marker{Tenant: tenant, Job: id, Run: run}).Ended(job) {
		return // restarted meanwhile as this run: it holds the slot
	}
	s.releaseRun(ctx, tenant, id, run)
}

// addRestartExecution adds to job the execution of attempt, the one its
// restart runs, as the processor adds it when it applies the restart
// (QUEUED, no service until its dispatch). The status consumer takes the
// latest attempt a record knows for the run it is in: the news of the runs
// before the restart, late or redelivered (a FAILED or CANCELED with
// attempt numbers up to the restart's count, or with none at all), then
// no longer moves the restarted job, while every event of the new run names
// this attempt or a later one. The job's record shows the new attempt at
// once, as ListJobExecutions does.
func addRestartExecution(job *jobsv1.Job, attempt int32) {
	job.Executions = append(job.Executions, &jobsv1.Execution{Attempt: attempt, Status: jobsv1.JobStatus_JOB_STATUS_QUEUED, Restarted: true})
}

// restartMsgID names the announcement of the restart of job id applied on
// revision rev of its record, when it had attempts executions:
// "restart-<job>-<attempts>-rev<rev>". Each restart request is applied on a
// revision of its own (the update is a compare-and-set on it), so each is
// announced under an id of its own, while a publish of the same request
// tried again is stored once. The attempts alone would not do: a restarted
// run that ended with no new execution (no service, its deadline, a cancel
// while queued) leaves them as they were, and the stream would drop the
// next restart as a duplicate, leaving the job QUEUED with nothing running.
func restartMsgID(id string, attempts int32, rev uint64) string {
	return fmt.Sprintf("restart-%s-%d-rev%d", id, attempts, rev)
}
