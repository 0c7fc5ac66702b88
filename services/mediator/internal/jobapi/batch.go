package jobapi

import (
	"context"
	"errors"
	"fmt"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
)

// Bounds of a BatchCreateJobs call.
const (
	// MaxBatchJobs bounds its jobs, as Google's AIP-233 suggests: a call's
	// jobs are held in memory until all are answered.
	MaxBatchJobs = 1000
	// MaxBatchBytes bounds its encoded requests, below the 4 MiB a gRPC
	// client (the REST gateway's too) takes by default: the answer repeats
	// every job with what the mediator adds (about 100 bytes each), and
	// jobs created but answered in a message the client refuses would be
	// submitted again.
	MaxBatchBytes = 3 << 20
)

// batchCreators is how many jobs of a batch are created at once. Each
// creation waits on round trips (the record and its announcement, the
// quota and the index, which group the waiting creations of all calls into
// shared commits), so creating them side by side is what makes a batch
// cheaper than as many CreateJob calls.
const batchCreators = 256

// maxCreating bounds the jobs of all batches being created at once: each
// has up to two publishes awaiting their answers, and the NATS connection,
// shared with every CreateJob call, refuses more than 4,000.
const maxCreating = 512

// BatchCreateJobs implements jobsv1.JobServiceServer: every request is
// checked as CreateJob checks it before any job is created, so an invalid
// batch writes nothing; then each job is created as CreateJob creates it,
// and a job that cannot be (its quota reached, the store unavailable) is
// answered with its problem in its place while the others go on.
func (s *Server) BatchCreateJobs(ctx context.Context, req *jobsv1.BatchCreateJobsRequest) (*jobsv1.BatchCreateJobsResponse, error) {
	tenant, err := auth.TenantFrom(ctx)
	if err != nil {
		return nil, err
	}
	reqs := req.GetRequests()
	switch {
	case len(reqs) == 0:
		return nil, problem.InvalidArgument("requests", "a batch needs at least one job")
	case len(reqs) > MaxBatchJobs:
		return nil, problem.InvalidArgument("requests", "a batch holds at most %d jobs, not %d", MaxBatchJobs, len(reqs))
	}
	if n := proto.Size(req); n > MaxBatchBytes {
		return nil, problem.InvalidArgument("requests", "a batch of %d bytes; at most %d, so that its answer fits what a client takes", n, MaxBatchBytes)
	}
	checks := make([]checked, len(reqs))
	// Two jobs of one batch under one request id would each take a quota
	// slot and be answered with one job: a client's mistake, said as such.
	first := map[string]int{}
	for i, r := range reqs {
		if checks[i], err = s.checkCreate(ctx, tenant, r); err != nil {
			return nil, inRequest(i, err)
		}
		if id := checks[i].requestID; id != "" {
			if j, ok := first[id]; ok {
				return nil, problem.InvalidArgument(fmt.Sprintf("requests[%d].request_id", i), "requests[%d] repeats the request id of requests[%d]", i, j)
			}
			first[id] = i
		}
	}

	results := make([]*jobsv1.BatchCreateJobsResult, len(reqs))
	var g errgroup.Group
	g.SetLimit(batchCreators)
	for i, c := range checks {
		g.Go(func() error {
			job, err := s.createInBatch(ctx, tenant, c)
			if err != nil {
				results[i] = &jobsv1.BatchCreateJobsResult{Result: &jobsv1.BatchCreateJobsResult_Error{
					Error: problem.FromError(ctx, fmt.Errorf("create job of requests[%d]: %w", i, err))}}
				return nil
			}
			results[i] = &jobsv1.BatchCreateJobsResult{Result: &jobsv1.BatchCreateJobsResult_Job{Job: job}}
			return nil
		})
	}
	_ = g.Wait() // every creation reports in its result
	return &jobsv1.BatchCreateJobsResponse{Results: results}, nil
}

// createInBatch creates one job of a batch, unless the client has given up
// on the call first: nobody would learn of a job created then. A creation
// under way goes to its end, as CreateJob's does.
func (s *Server) createInBatch(ctx context.Context, tenant string, c checked) (*jobsv1.Job, error) {
	if err := s.creating.Acquire(ctx, 1); err != nil {
		return nil, err
	}
	defer s.creating.Release(1)
	if err := ctx.Err(); err != nil {
		return nil, err // Acquire may succeed on an ended ctx
	}
	return s.create(ctx, tenant, c)
}

// inRequest names request i of a batch in err's field and detail, so a
// client knows which of its jobs is refused.
func inRequest(i int, err error) error {
	var pe *problem.Error
	if !errors.As(err, &pe) {
		return fmt.Errorf("check requests[%d]: %w", i, err)
	}
	named := *pe
	if named.Field != "" {
		named.Field = fmt.Sprintf("requests[%d].%s", i, pe.Field)
	}
	named.Detail = fmt.Sprintf("requests[%d]: %s", i, pe.Detail)
	return &named
}
