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
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// executions returns the executions of job id as the processor records them
// (every attempt, lost ones included), or nil when it has no record yet.
// The processor's record is the authority: the job record only learns of an
// attempt through status events, and a lost attempt's end is not one.
func (s *Server) executions(ctx context.Context, id string) ([]*jobsv1.Execution, bool, error) {
	kv, err := s.js.KeyValue(ctx, bus.BucketExecutions)
	if err != nil {
		return nil, false, fmt.Errorf("bind bucket %s: %w", bus.BucketExecutions, err)
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
// The job record moves first, so the processor's news of the new attempt
// finds it no longer terminal.
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
	ex, ok, err := s.executions(ctx, job.GetId())
	if err != nil {
		return nil, storeError(ctx, err)
	}
	if !ok {
		ex = job.GetExecutions()
	}
	attempts := int32(len(ex))
	before := proto.CloneOf(job)
	job.Status = jobsv1.JobStatus_JOB_STATUS_QUEUED
	job.Progress = 0
	job.StatusMessage = "restarted"
	job.Error = nil
	job.Output = nil
	job.EndTime = nil
	job.VerifiedQuantity = 0
	job.UpdateTime = timestamppb.New(s.now())
	addRestartExecution(job, attempts+1)
	newRev, err := s.store.Update(ctx, job, rev)
	if errors.Is(err, jobstore.ErrConflict) {
		return nil, problem.FailedPrecondition("job-changed", fmt.Sprintf("job %s changed meanwhile; try again", job.GetId()))
	}
	if err != nil {
		return nil, storeError(ctx, fmt.Errorf("restart job %s: %w", job.GetId(), err))
	}
	msgID := restartMsgID(job.GetId(), attempts, rev)
	ev := &eventsv1.JobRestartRequested{JobId: job.GetId(), Tenant: job.GetTenant(), Attempts: attempts}
	if err := bus.Publish(ctx, s.js, bus.SubjectJobRestart, msgID, ev); err != nil {
		// Put the record back: a QUEUED job the processor never hears of
		// would wait forever.
		if _, rerr := s.store.Update(context.WithoutCancel(ctx), before, newRev); rerr != nil {
			slog.ErrorContext(ctx, "restart not sent and job left QUEUED", "job", job.GetId(), "err", rerr)
		}
		return nil, problem.Unavailable("cannot request the restart now", err)
	}
	slog.InfoContext(ctx, "job restart requested", "job", job.GetId(), "attempt", attempts+1)
	return job, nil
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
	job.Executions = append(job.Executions, &jobsv1.Execution{Attempt: attempt, Status: jobsv1.JobStatus_JOB_STATUS_QUEUED})
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
