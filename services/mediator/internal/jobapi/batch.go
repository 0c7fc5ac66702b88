package jobapi

import (
	"context"
	"errors"
	"fmt"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/status"
)

// MaxBatchJobs bounds a BatchCreateJobs call, as Google's AIP-233 suggests:
// a call's jobs are held in memory until all are answered.
const MaxBatchJobs = 1000

// batchCreators is how many jobs of a batch are created at once. Each
// creation waits on round trips (the record and its announcement, the
// quota and the index, which group the waiting creations of all calls into
// shared commits), so creating them side by side is what makes a batch
// cheaper than as many CreateJob calls.
const batchCreators = 256

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
	checks := make([]checked, len(reqs))
	for i, r := range reqs {
		if checks[i], err = s.checkCreate(ctx, r); err != nil {
			return nil, inRequest(i, err)
		}
	}

	results := make([]*jobsv1.BatchCreateJobsResult, len(reqs))
	var g errgroup.Group
	g.SetLimit(batchCreators)
	for i, c := range checks {
		g.Go(func() error {
			job, err := s.create(ctx, tenant, c)
			if err != nil {
				results[i] = &jobsv1.BatchCreateJobsResult{Result: &jobsv1.BatchCreateJobsResult_Error{
					Error: problem.FromStatus(status.Convert(problem.ToStatus(ctx, fmt.Errorf("create job of requests[%d]: %w", i, err))))}}
				return nil
			}
			results[i] = &jobsv1.BatchCreateJobsResult{Result: &jobsv1.BatchCreateJobsResult_Job{Job: job}}
			return nil
		})
	}
	_ = g.Wait() // every creation reports in its result
	return &jobsv1.BatchCreateJobsResponse{Results: results}, nil
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
