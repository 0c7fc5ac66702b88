package jobapi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// standInRegistry stands in for the service registry (a separate service;
// the end-to-end tests run the real one): a fixed set of profiles, or a
// lookup failure when down is set.
type standInRegistry struct {
	mu       sync.Mutex
	profiles map[string]*registryv1.JobProfile
	down     bool
	calls    int
}

func (r *standInRegistry) GetJobProfile(_ context.Context, name string) (*registryv1.JobProfile, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.down {
		return nil, errors.New("connection refused")
	}
	p, ok := r.profiles[name]
	if !ok {
		return nil, ErrProfileNotFound
	}
	return p, nil
}

func (r *standInRegistry) setDown(down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = down
}

type fixture struct {
	env      *testsupport.Env
	store    *jobstore.Store
	srv      *Server
	registry *standInRegistry
}

func setup(t testing.TB) *fixture {
	t.Helper()
	env := testsupport.Start(t)
	reg := &standInRegistry{profiles: map[string]*registryv1.JobProfile{
		"ExtractTechnicalMetadata": {
			Name: "ExtractTechnicalMetadata", JobType: "AmeJob",
			InputParameters: []*registryv1.ParameterSpec{{Name: "inputFile", Type: "Locator"}},
		},
		"Transcode": {
			Name: "Transcode", JobType: "TransformJob",
			InputParameters: []*registryv1.ParameterSpec{{Name: "inputFile"}, {Name: "preset"}},
		},
	}}
	store := jobstore.New(env.Jobs)
	srv, err := New(store, env.JS, reg)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{env: env, store: store, srv: srv, registry: reg}
}

func as(tenant string) context.Context {
	return auth.WithPrincipal(context.Background(), auth.Principal{Tenant: tenant})
}

func ameJob() *jobsv1.Job {
	return &jobsv1.Job{
		Profile: "ExtractTechnicalMetadata",
		Input:   &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{"inputFile": {Url: "file:///media/a.mp4"}}},
	}
}

// wantProblem checks err is a status with code and, if field is set, that
// the field violation names it.
func wantProblem(t *testing.T, err error, code codes.Code, field string) {
	t.Helper()
	st := status.Convert(problem.ToStatus(context.Background(), err))
	if st.Code() != code {
		t.Fatalf("err = %v, want %s", err, code)
	}
	if field == "" {
		return
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.FieldViolations) > 0 && br.FieldViolations[0].Field == field {
			return
		}
	}
	t.Fatalf("err = %v, want field %q", err, field)
}

func TestCreateJob(t *testing.T) {
	f := setup(t)
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)

	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	if job.Status != jobsv1.JobStatus_JOB_STATUS_NEW || job.Tenant != "acme" || job.JobType != "AmeJob" ||
		job.CreateTime == nil || job.UpdateTime == nil || !jobstore.ValidID(job.Id) {
		t.Fatalf("created job = %v", job)
	}
	stored, _, err := f.store.Get(context.Background(), job.Id)
	if err != nil || stored.Status != jobsv1.JobStatus_JOB_STATUS_NEW {
		t.Fatalf("stored = %v, %v", stored, err)
	}
	ev := &eventsv1.JobCreated{}
	if id := created.Next(ev); id != "created-"+job.Id || ev.Job.GetId() != job.Id {
		t.Fatalf("JobCreated msg id %q job %v", id, ev.Job)
	}

	// Server-owned fields from the client are ignored.
	in := ameJob()
	in.Id, in.Tenant, in.Status, in.JobType = "mine", "evil", jobsv1.JobStatus_JOB_STATUS_COMPLETED, "QAJob"
	job2, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: in})
	if err != nil {
		t.Fatal(err)
	}
	if job2.Id == "mine" || job2.Tenant != "acme" || job2.Status != jobsv1.JobStatus_JOB_STATUS_NEW || job2.JobType != "QAJob" {
		t.Fatalf("client overrode server fields: %v", job2)
	}
	if job2.Id <= job.Id {
		t.Fatalf("ids not time ordered: %s then %s", job.Id, job2.Id)
	}
}

func TestCreateJobValidation(t *testing.T) {
	f := setup(t)
	with := func(mut func(j *jobsv1.Job)) *jobsv1.Job { j := ameJob(); mut(j); return j }
	for _, tc := range []struct {
		name  string
		job   *jobsv1.Job
		field string
	}{
		{"no job", nil, "job"},
		{"no profile", with(func(j *jobsv1.Job) { j.Profile = "" }), "job.profile"},
		{"unknown profile", with(func(j *jobsv1.Job) { j.Profile = "Nope" }), "job.profile"},
		{"bad scheme", with(func(j *jobsv1.Job) { j.Input.Locators["inputFile"].Url = "ftp://h/a.mp4" }), "job.input.locators[inputFile]"},
		{"unparsable url", with(func(j *jobsv1.Job) { j.Input.Locators["inputFile"].Url = "http://[::1" }), "job.input.locators[inputFile]"},
		{"no host", with(func(j *jobsv1.Job) { j.Input.Locators["inputFile"].Url = "s3:///key" }), "job.input.locators[inputFile]"},
		{"missing required input", with(func(j *jobsv1.Job) { j.Input = nil }), "job.input.inputFile"},
		{"missing required parameter", with(func(j *jobsv1.Job) { j.Profile = "Transcode" }), "job.input.preset"},
		{"bad notification endpoint", with(func(j *jobsv1.Job) { j.NotificationEndpoint = "mailto:x@y" }), "job.notification_endpoint"},
		{"too many tags", with(func(j *jobsv1.Job) {
			j.Tags = map[string]string{}
			for i := range maxTags + 1 {
				j.Tags[fmt.Sprint(i)] = "v"
			}
		}), "job.tags"},
		// Past NATS's message limit a job would be stored and never
		// announced: refused, naming what takes the room.
		{"tracking too large", with(func(j *jobsv1.Job) { j.Tracking = structpb.NewStringValue(strings.Repeat("x", maxJobBytes)) }), "job.tracking"},
		{"parameters too large", with(func(j *jobsv1.Job) {
			j.Input.Parameters, _ = structpb.NewStruct(map[string]any{"notes": strings.Repeat("x", maxJobBytes)})
		}), "job.input.parameters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: tc.job})
			wantProblem(t, err, codes.InvalidArgument, tc.field)
		})
	}
	if ids, err := f.store.IDs(context.Background()); err != nil || len(ids) != 0 {
		t.Fatalf("invalid jobs stored: %v, %v", ids, err)
	}
	// Large, within the bound: created.
	big := with(func(j *jobsv1.Job) { j.Tracking = structpb.NewStringValue(strings.Repeat("x", maxJobBytes*3/4)) })
	if _, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: big}); err != nil {
		t.Fatalf("job of %d bytes refused: %v", proto.Size(big), err)
	}

	// A required parameter may come as a parameter instead of a locator.
	params, _ := structpb.NewStruct(map[string]any{"preset": "h264"})
	ok := with(func(j *jobsv1.Job) { j.Profile = "Transcode"; j.Input.Parameters = params })
	if _, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ok}); err != nil {
		t.Fatalf("valid job refused: %v", err)
	}

	f.registry.setDown(true)
	_, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	wantProblem(t, err, codes.Unavailable, "")

	_, err = f.srv.CreateJob(context.Background(), &jobsv1.CreateJobRequest{Job: ameJob()})
	wantProblem(t, err, codes.Unauthenticated, "")
}

func TestCreateJobIdempotent(t *testing.T) {
	f := setup(t)
	first, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: "r-1"})
	if err != nil {
		t.Fatal(err)
	}
	// Given again, in either place, the request id answers the first job.
	in := ameJob()
	in.RequestId = "r-1"
	again, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: in})
	if err != nil || again.Id != first.Id {
		t.Fatalf("repeat = %v, %v; want job %s", again, err, first.Id)
	}
	// Another tenant's request id is its own.
	other, err := f.srv.CreateJob(as("globex"), &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: "r-1"})
	if err != nil || other.Id == first.Id {
		t.Fatalf("other tenant = %v, %v", other, err)
	}

	// Concurrent repeats all get one job, and only one record remains.
	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		wg.Go(func() {
			j, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: "r-2"})
			if err != nil {
				t.Errorf("create: %v", err)
				return
			}
			ids[i] = j.Id
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("concurrent repeats got different jobs: %v", ids)
		}
	}
	all, err := f.store.IDs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 { // first, other, r-2
		t.Fatalf("%d job records, want 3", len(all))
	}
}

func TestTenantIsolation(t *testing.T) {
	f := setup(t)
	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := f.srv.GetJob(as("acme"), &jobsv1.GetJobRequest{Id: job.Id}); err != nil || got.Id != job.Id {
		t.Fatalf("owner GetJob = %v, %v", got, err)
	}
	_, err = f.srv.GetJob(as("globex"), &jobsv1.GetJobRequest{Id: job.Id})
	wantProblem(t, err, codes.NotFound, "")
	_, err = f.srv.CancelJob(as("globex"), &jobsv1.CancelJobRequest{Id: job.Id})
	wantProblem(t, err, codes.NotFound, "")
	list, err := f.srv.ListJobs(as("globex"), &jobsv1.ListJobsRequest{})
	if err != nil || len(list.Jobs) != 0 {
		t.Fatalf("other tenant lists %v, %v", list, err)
	}
	for _, id := range []string{"nope", "../x", "a.b.c", "0190b6f1-0000-7000-8000-000000000000"} {
		_, err := f.srv.GetJob(as("acme"), &jobsv1.GetJobRequest{Id: id})
		wantProblem(t, err, codes.NotFound, "")
	}
}

func TestCancelJob(t *testing.T) {
	f := setup(t)
	cancels := f.env.WatchEvents(t, bus.SubjectJobCancel)
	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	_, rev, err := f.store.Get(context.Background(), job.Id)
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.srv.CancelJob(as("acme"), &jobsv1.CancelJobRequest{Id: job.Id})
	if err != nil || got.Id != job.Id {
		t.Fatalf("CancelJob = %v, %v", got, err)
	}
	ev := &eventsv1.JobCancelRequested{}
	if id := cancels.Next(ev); id != fmt.Sprintf("cancel-%s-rev%d", job.Id, rev) || ev.JobId != job.Id || ev.Tenant != "acme" {
		t.Fatalf("cancel event %q %v", id, ev)
	}

	// A terminal job cannot be cancelled.
	stored, rev, err := f.store.Get(context.Background(), job.Id)
	if err != nil {
		t.Fatal(err)
	}
	stored.Status = jobsv1.JobStatus_JOB_STATUS_COMPLETED
	if _, err := f.store.Update(context.Background(), stored, rev); err != nil {
		t.Fatal(err)
	}
	_, err = f.srv.CancelJob(as("acme"), &jobsv1.CancelJobRequest{Id: job.Id})
	wantProblem(t, err, codes.FailedPrecondition, "")
	// REST clients get 409 Conflict with the job-terminal type.
	if p := problem.FromStatus(status.Convert(problem.ToStatus(context.Background(), err))); p.Type != problem.TypePrefix+"job-terminal" || p.Status != 409 {
		t.Fatalf("problem = %v", p)
	}
}

// TestListJobsPagination pages through ~1000 jobs of one tenant mixed with
// another's, checking every job comes exactly once, newest first.
func TestListJobsPagination(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	const n = 1000
	want := map[string]bool{}
	var completed int
	for i := range n + 200 {
		id, err := jobstore.NewID()
		if err != nil {
			t.Fatal(err)
		}
		j := &jobsv1.Job{Id: id, Tenant: "acme", Profile: "ExtractTechnicalMetadata", Status: jobsv1.JobStatus_JOB_STATUS_QUEUED, CreateTime: timestamppb.Now()}
		switch {
		case i%6 == 5:
			j.Tenant = "globex"
		case i%3 == 0:
			j.Status = jobsv1.JobStatus_JOB_STATUS_COMPLETED
			completed++
		}
		if j.Tenant == "acme" {
			want[id] = true
		}
		if _, err := f.store.Create(ctx, j); err != nil {
			t.Fatal(err)
		}
	}

	list := func(req *jobsv1.ListJobsRequest) []*jobsv1.Job {
		t.Helper()
		var all []*jobsv1.Job
		for pages := 0; ; pages++ {
			resp, err := f.srv.ListJobs(as("acme"), req)
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Jobs) == 0 && pages > 0 {
				t.Fatalf("empty page after a next page token")
			}
			all = append(all, resp.Jobs...)
			if resp.NextPageToken == "" {
				return all
			}
			req.PageToken = resp.NextPageToken
		}
	}

	all := list(&jobsv1.ListJobsRequest{PageSize: 70})
	if len(all) != len(want) {
		t.Fatalf("listed %d jobs, want %d", len(all), len(want))
	}
	seen := map[string]bool{}
	for i, j := range all {
		if !want[j.Id] || seen[j.Id] {
			t.Fatalf("job %s listed wrongly (foreign or repeated)", j.Id)
		}
		seen[j.Id] = true
		if i > 0 && all[i-1].Id <= j.Id {
			t.Fatalf("not newest first at %d", i)
		}
	}

	done := list(&jobsv1.ListJobsRequest{PageSize: 100, Status: jobsv1.JobStatus_JOB_STATUS_COMPLETED})
	if len(done) != completed {
		t.Fatalf("status filter: %d jobs, want %d", len(done), completed)
	}
	if got := list(&jobsv1.ListJobsRequest{Profile: "Transcode"}); len(got) != 0 {
		t.Fatalf("profile filter: %d jobs", len(got))
	}
	def, err := f.srv.ListJobs(as("acme"), &jobsv1.ListJobsRequest{})
	if err != nil || len(def.Jobs) != DefaultPageSize || def.NextPageToken == "" {
		t.Fatalf("default page: %d jobs, %v", len(def.GetJobs()), err)
	}

	_, err = f.srv.ListJobs(as("acme"), &jobsv1.ListJobsRequest{PageSize: MaxPageSize + 1})
	wantProblem(t, err, codes.InvalidArgument, "page_size")
	_, err = f.srv.ListJobs(as("acme"), &jobsv1.ListJobsRequest{PageToken: "garbage!"})
	wantProblem(t, err, codes.InvalidArgument, "page_token")
}
