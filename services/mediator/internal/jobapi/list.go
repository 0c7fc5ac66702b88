package jobapi

import (
	"context"
	"errors"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/services/mediator/internal/jobindex"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
)

// maxListExamined bounds the index entries one ListJobs call looks at. A
// filter matching few of a tenant's many jobs would otherwise read them
// all in one call (a job record each for a status filter): past the
// bound the page ends short, possibly empty, with a token to go on from.
const maxListExamined = 2000

// listIndexed answers ListJobs from the tenant's index: one range read from
// the page token on, the job records read only for entries whose immutable
// attributes (profile, tags, creation time) match.
func (s *Server) listIndexed(ctx context.Context, tenant string, req *jobsv1.ListJobsRequest, size int, after string) (*jobsv1.ListJobsResponse, error) {
	q := jobindex.Query{Tenant: tenant, After: after, Limit: maxListExamined}
	if t := req.GetCreateTimeAfter(); t != nil {
		q.CreatedAfter = t.AsTime()
	}
	if t := req.GetCreateTimeBefore(); t != nil {
		q.CreatedBefore = t.AsTime()
	}
	q.Match = func(e jobindex.Entry) bool {
		return (req.GetProfile() == "" || e.Profile == req.GetProfile()) && tagMatches(e.Tags, req.GetTag())
	}
	resp := &jobsv1.ListJobsResponse{}
	batch := size + 1
	if req.GetStatus() != jobsv1.JobStatus_JOB_STATUS_UNSPECIFIED {
		batch = max(batch, 200) // status filters skip entries: read ahead
	}
	err := s.index.Scan(ctx, q, batch, func(e jobindex.Entry) (bool, error) {
		job, _, err := s.store.Get(ctx, e.ID)
		if errors.Is(err, jobstore.ErrNotFound) {
			return true, nil // withdrawn, deleted, or never stored
		}
		if err != nil {
			return false, err
		}
		if !matches(job, tenant, req) {
			return true, nil
		}
		if len(resp.Jobs) == size {
			// One more match exists: only then is there a next page.
			resp.NextPageToken = encodePageToken(resp.Jobs[size-1].GetId())
			return false, nil
		}
		resp.Jobs = append(resp.Jobs, job)
		return true, nil
	})
	if limit := (*jobindex.LimitError)(nil); errors.As(err, &limit) {
		resp.NextPageToken = encodePageToken(limit.Last)
		err = nil
	}
	if err != nil {
		return nil, storeError(ctx, err)
	}
	return resp, nil
}
