package jobapi

import (
	"context"
	"net/http"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/quota"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// A batch's jobs are each created as CreateJob creates them: stored,
// announced and answered in the requests' order; a repeated request id is
// answered with the job it created the first time, and announced once.
func TestBatchCreateJobs(t *testing.T) {
	f := setup(t)
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	first, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: "r-1"})
	if err != nil {
		t.Fatal(err)
	}
	created.Next(&eventsv1.JobCreated{})

	transcode := ameJob()
	transcode.Profile = "Transcode"
	if transcode.Input.Parameters, err = structpb.NewStruct(map[string]any{"preset": "h264"}); err != nil {
		t.Fatal(err)
	}
	resp, err := f.srv.BatchCreateJobs(as("acme"), &jobsv1.BatchCreateJobsRequest{Requests: []*jobsv1.CreateJobRequest{
		{Job: ameJob()}, {Job: ameJob(), RequestId: "r-1"}, {Job: transcode, RequestId: "r-2"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	res := resp.GetResults()
	if len(res) != 3 {
		t.Fatalf("%d results, want 3", len(res))
	}
	if job := res[1].GetJob(); !proto.Equal(job, first) {
		t.Fatalf("repeated request id answered %v, want the first job %v", job, first)
	}
	news := map[string]*jobsv1.Job{}
	for i, want := range []string{"ExtractTechnicalMetadata", "Transcode"} {
		job := res[i*2].GetJob()
		if job.GetProfile() != want || job.GetTenant() != "acme" || job.GetStatus() != jobsv1.JobStatus_JOB_STATUS_NEW || job.GetId() == first.GetId() {
			t.Fatalf("results[%d] = %v, want a new %s job of acme", i*2, res[i*2], want)
		}
		stored, _, err := f.store.Get(context.Background(), job.GetId())
		if err != nil || !proto.Equal(stored, job) {
			t.Fatalf("record of results[%d] = %v, %v; want %v", i*2, stored, err, job)
		}
		news[job.GetId()] = job
	}
	if owner, ok, err := f.store.RequestOwner(context.Background(), "acme", "r-2"); err != nil || !ok || news[owner] == nil {
		t.Fatalf("request id r-2 owner = %q %v, %v", owner, ok, err)
	}
	for range news {
		ev := &eventsv1.JobCreated{}
		id := created.Next(ev)
		if job := news[ev.GetJob().GetId()]; job == nil || id != "created-"+job.GetId() || !proto.Equal(ev.GetJob(), job) {
			t.Fatalf("JobCreated %q = %v, want one of the new jobs", id, ev.GetJob())
		}
		delete(news, ev.GetJob().GetId())
	}
	created.None(300 * time.Millisecond)
}

// One invalid request refuses the whole batch, naming it, before anything
// is written.
func TestBatchCreateJobsInvalidCreatesNothing(t *testing.T) {
	f := setup(t)
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	ctx := as("acme")
	_, err := f.srv.BatchCreateJobs(ctx, &jobsv1.BatchCreateJobsRequest{Requests: []*jobsv1.CreateJobRequest{
		{Job: ameJob()}, {Job: ameJob()}, {Job: &jobsv1.Job{Profile: "Nope"}},
	}})
	wantProblem(t, err, codes.InvalidArgument, "requests[2].job.profile")
	differing := ameJob()
	differing.RequestId = "c"
	_, err = f.srv.BatchCreateJobs(ctx, &jobsv1.BatchCreateJobsRequest{Requests: []*jobsv1.CreateJobRequest{
		{Job: ameJob(), RequestId: "a"}, {Job: differing, RequestId: "b"},
	}})
	wantProblem(t, err, codes.InvalidArgument, "requests[1].request_id")
	_, err = f.srv.BatchCreateJobs(ctx, &jobsv1.BatchCreateJobsRequest{})
	wantProblem(t, err, codes.InvalidArgument, "requests")
	tooMany := make([]*jobsv1.CreateJobRequest, MaxBatchJobs+1)
	for i := range tooMany {
		tooMany[i] = &jobsv1.CreateJobRequest{Job: ameJob()}
	}
	_, err = f.srv.BatchCreateJobs(ctx, &jobsv1.BatchCreateJobsRequest{Requests: tooMany})
	wantProblem(t, err, codes.InvalidArgument, "requests")
	created.None(300 * time.Millisecond)
	if list, err := f.srv.ListJobs(ctx, &jobsv1.ListJobsRequest{}); err != nil || len(list.GetJobs()) != 0 {
		t.Fatalf("jobs after refused batches = %v, %v; want none", list, err)
	}
}

// A job the tenant's quota refuses is answered with its problem in its
// place; the batch's other jobs are created.
func TestBatchCreateJobsQuotaRefusesSome(t *testing.T) {
	f := setup(t)
	f.srv.SetAdmission(onlyQuota{quota.New(f.env.EtcdCli), tenants.Quota{MaxConcurrentJobs: 2}})
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	reqs := make([]*jobsv1.CreateJobRequest, 5)
	for i := range reqs {
		reqs[i] = &jobsv1.CreateJobRequest{Job: ameJob()}
	}
	resp, err := f.srv.BatchCreateJobs(as("acme"), &jobsv1.BatchCreateJobsRequest{Requests: reqs})
	if err != nil {
		t.Fatal(err)
	}
	var jobs, refused int
	for i, r := range resp.GetResults() {
		switch {
		case r.GetJob() != nil:
			jobs++
			created.Next(&eventsv1.JobCreated{})
		case r.GetError().GetStatus() == http.StatusTooManyRequests && r.GetError().GetType() == problem.TypePrefix+"quota-max-concurrent-jobs":
			refused++
		default:
			t.Fatalf("results[%d] = %v, want a job or the quota's problem", i, r)
		}
	}
	if jobs != 2 || refused != 3 {
		t.Fatalf("%d jobs created, %d refused; want 2 and 3", jobs, refused)
	}
	created.None(300 * time.Millisecond)
}
