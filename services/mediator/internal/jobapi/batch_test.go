package jobapi

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
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
	for range len(news) { // not range news: the loop deletes from it
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

// batchOf makes n requests of ameJob; with a prefix, each has its own
// request id.
func batchOf(n int, requestIDs string) *jobsv1.BatchCreateJobsRequest {
	reqs := make([]*jobsv1.CreateJobRequest, n)
	for i := range reqs {
		reqs[i] = &jobsv1.CreateJobRequest{Job: ameJob()}
		if requestIDs != "" {
			reqs[i].RequestId = fmt.Sprintf("%s-%d", requestIDs, i)
		}
	}
	return &jobsv1.BatchCreateJobsRequest{Requests: reqs}
}

// A batch whose client gives up creates no job it has not started: a
// client gone before the call creates none, and one gone half way leaves
// every quota slot and every job counted of the period to a stored job.
func TestBatchCreateJobsClientGone(t *testing.T) {
	f := setup(t)
	gone, cancel := context.WithCancel(as("acme"))
	cancel()
	resp, err := f.srv.BatchCreateJobs(gone, batchOf(100, ""))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range resp.GetResults() {
		if r.GetError().GetStatus() != 499 {
			t.Fatalf("results[%d] of a call whose client had gone = %v, want Canceled (499)", i, r)
		}
	}
	if ids, err := f.store.IDs(context.Background()); err != nil || len(ids) != 0 {
		t.Fatalf("%d jobs created for a client gone before the call (%v)", len(ids), err)
	}

	for _, requestIDs := range []string{"", "r"} {
		t.Run("request ids "+requestIDs, func(t *testing.T) {
			f := setup(t)
			adm := quota.New(f.env.EtcdCli)
			q := tenants.Quota{MaxConcurrentJobs: 100000, MaxJobsPerPeriod: 100000, Period: tenants.PeriodDay}
			f.srv.SetAdmission(onlyQuota{adm, q})
			created := f.env.WatchEvents(t, bus.SubjectJobCreated)
			ctx, cancel := context.WithCancel(as("acme"))
			done := make(chan error, 1)
			go func() {
				_, err := f.srv.BatchCreateJobs(ctx, batchOf(1000, requestIDs))
				done <- err
			}()
			created.Next(&eventsv1.JobCreated{})
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			bg := context.Background()
			ids, err := f.store.IDs(bg)
			if err != nil {
				t.Fatal(err)
			}
			if len(ids) == 1000 {
				t.Fatal("every job created though the client had gone")
			}
			stored := map[string]bool{}
			for _, id := range ids {
				stored[id] = true
			}
			markers, err := adm.Markers(bg)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range markers {
				if !stored[m.Job] {
					t.Errorf("quota slot held by job %s, never stored", m.Job)
				}
			}
			active, err := adm.Active(bg, "acme")
			if err != nil {
				t.Fatal(err)
			}
			g, err := f.env.EtcdCli.Get(bg, quota.JobsKey("acme", quota.PeriodID(q.Period, time.Now())))
			if err != nil || len(g.Kvs) != 1 {
				t.Fatalf("period count: %v, %v", g, err)
			}
			if counted, _ := strconv.Atoi(string(g.Kvs[0].Value)); int(active) != len(ids) || counted != len(ids) {
				t.Fatalf("%d jobs stored, %d slots held, %d counted of the period; want them equal", len(ids), active, counted)
			}
		})
	}
}

// Two requests of one batch under one request id are refused, before
// anything is created; so is a batch whose answer would be larger than a
// client takes.
func TestBatchCreateJobsRefusedWhole(t *testing.T) {
	f := setup(t)
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	ctx := as("acme")
	twice := batchOf(3, "r")
	twice.Requests[2].RequestId = "r-0"
	_, err := f.srv.BatchCreateJobs(ctx, twice)
	wantProblem(t, err, codes.InvalidArgument, "requests[2].request_id")

	big := batchOf(MaxBatchJobs, "")
	for _, r := range big.GetRequests() {
		r.Job.Tags = map[string]string{"note": strings.Repeat("x", 250), "more": strings.Repeat("y", 250), "again": strings.Repeat("z", 250),
			"last": strings.Repeat("w", 250), "one": strings.Repeat("v", 250), "two": strings.Repeat("u", 250),
			"three": strings.Repeat("t", 250), "four": strings.Repeat("s", 250), "five": strings.Repeat("r", 250),
			"six": strings.Repeat("q", 250), "seven": strings.Repeat("p", 250), "eight": strings.Repeat("o", 250),
			"nine": strings.Repeat("n", 250)}
	}
	_, err = f.srv.BatchCreateJobs(ctx, big)
	wantProblem(t, err, codes.InvalidArgument, "requests")
	created.None(300 * time.Millisecond)
}
