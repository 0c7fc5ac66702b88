package jobapi

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// rootsFixture is setup with locator roots read from real tenants in etcd,
// and a profile reading an input and writing to an output location, as
// CreateProxy does, whose output location may come as a URL parameter.
func rootsFixture(t *testing.T) (*fixture, *tenants.Store) {
	t.Helper()
	f := setup(t)
	f.registry.mu.Lock()
	f.registry.profiles["CreateProxy"] = &registryv1.JobProfile{
		Name: "CreateProxy", JobType: "TransformJob",
		InputParameters: []*registryv1.ParameterSpec{{Name: "inputFile", Type: "locator"}, {Name: "outputLocation", Type: "locator"}},
	}
	f.registry.mu.Unlock()
	ts := tenants.New(f.env.EtcdCli)
	f.srv.SetLocatorRoots(ts)
	return f, ts
}

func proxyJob(in, out string) *jobsv1.Job {
	return &jobsv1.Job{Profile: "CreateProxy", Input: &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{
		"inputFile": {Url: in}, "outputLocation": {Url: out},
	}}}
}

// wantNotAllowed checks err refuses the job for its locator at field:
// 403 / PermissionDenied, locator-not-allowed, the tenant named and how an
// admin grants roots.
func wantNotAllowed(t *testing.T, what string, err error, tenant, field string) {
	t.Helper()
	wantProblem(t, err, codes.PermissionDenied, field)
	p := problem.FromStatus(status.Convert(problem.ToStatus(context.Background(), err)))
	if p.Type != problem.TypePrefix+TypeLocatorNotAllowed || p.Status != 403 ||
		!strings.Contains(p.Detail, `tenant "`+tenant+`"`) || !strings.Contains(p.Detail, "set-locator-roots "+tenant) {
		t.Fatalf("%s: %+v, want 403 %s naming tenant %s and how roots are granted", what, p, TypeLocatorNotAllowed, tenant)
	}
}

// The audit's case: a tenant names another tenant's file as its input, or
// another tenant's directory as its output location. File and s3 locators
// must lie under the tenant's roots, else the job is refused before
// anything is stored or announced.
func TestLocatorRootsScopeJobs(t *testing.T) {
	f, ts := rootsFixture(t)
	ctx := context.Background()
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	for _, id := range []string{"attacker", "acme"} {
		if err := ts.EnsureTenant(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	const put = "https://attacker.example.com/upload"

	// No roots: no file:// or s3:// locator at all, input or output.
	for _, tc := range []struct {
		job   *jobsv1.Job
		field string
	}{
		{proxyJob("file:///tmp/audit-b/media/tenantA/secret-clip.mp4", put), "job.input.locators[inputFile]"},
		{proxyJob("https://attacker.example.com/in.mp4", "file:///tmp/audit-b/media/tenantA/"), "job.input.locators[outputLocation]"},
		{proxyJob("s3://media/tenantA/secret-clip.mp4", put), "job.input.locators[inputFile]"},
	} {
		_, err := f.srv.CreateJob(as("attacker"), &jobsv1.CreateJobRequest{Job: tc.job})
		wantNotAllowed(t, "tenant without roots", err, "attacker", tc.field)
	}
	// Network locators are the network policy's, not the roots'.
	if _, err := f.srv.CreateJob(as("attacker"), &jobsv1.CreateJobRequest{Job: proxyJob("https://attacker.example.com/in.mp4", put)}); err != nil {
		t.Fatalf("http job of a tenant without roots: %v", err)
	}
	created.Next(&eventsv1.JobCreated{})
	created.None(200 * time.Millisecond) // the refused jobs were never announced
	if ids, err := f.store.IDs(ctx); err != nil || len(ids) != 1 {
		t.Fatalf("jobs stored: %v, %v; want only the http one", ids, err)
	}

	// With roots, what lies under them and nothing else.
	if _, err := ts.SetLocatorRoots(ctx, "acme", []string{"file:///srv/media/acme/", "s3://shared/acme/"}); err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{"file:///srv/media/acme/clip.mp4", "file://localhost/srv/media/acme/a/b.mp4", "s3://shared/acme/clip.mp4"} {
		job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: proxyJob(in, "file:///srv/media/acme/out/")})
		if err != nil || job.GetInput().GetLocators()["inputFile"].GetUrl() != in {
			t.Fatalf("%s under acme's roots: %v, %v", in, job, err)
		}
	}
	for _, in := range []string{
		"file:///srv/media/acme2/clip.mp4",
		"file:///srv/media/acme/../acme2/clip.mp4",
		"file:///srv/media/acme%2F..%2Facme2/clip.mp4",
		"file:///srv/media/acme/%2e%2e/acme2/clip.mp4",
		"file:///tmp/audit-b/media/tenantA/secret-clip.mp4",
		"s3://shared/acme2/clip.mp4",
		"s3://shared/acme/../other/clip.mp4",
		"s3://other/acme/clip.mp4",
	} {
		_, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: proxyJob(in, "file:///srv/media/acme/out/")})
		wantNotAllowed(t, in, err, "acme", "job.input.locators[inputFile]")
	}
	_, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: proxyJob("file:///srv/media/acme/clip.mp4", "file:///srv/media/other/")})
	wantNotAllowed(t, "output outside the roots", err, "acme", "job.input.locators[outputLocation]")

	// An output location given as a URL parameter is a locator too, and
	// the refusal names the parameter the client sent.
	withOutputParam := func(out string) *jobsv1.Job {
		job := proxyJob("file:///srv/media/acme/clip.mp4", "")
		delete(job.Input.Locators, "outputLocation")
		job.Input.Parameters = &structpb.Struct{Fields: map[string]*structpb.Value{"outputLocation": structpb.NewStringValue(out)}}
		return job
	}
	_, err = f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: withOutputParam("file:///srv/media/victim/")})
	wantNotAllowed(t, "parameter turned into a locator", err, "acme", "job.input.outputLocation")
	if _, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: withOutputParam("file:///srv/media/acme/out/")}); err != nil {
		t.Fatalf("output parameter under the roots: %v", err)
	}
}

// A batch naming one locator outside the tenant's roots is refused whole,
// naming the request, and creates nothing.
func TestLocatorRootsScopeBatches(t *testing.T) {
	f, ts := rootsFixture(t)
	ctx := context.Background()
	if _, err := ts.CreateTenant(ctx, tenants.Tenant{ID: "acme", LocatorRoots: []string{"file:///srv/media/acme/"}}); err != nil {
		t.Fatal(err)
	}
	ok := proxyJob("file:///srv/media/acme/a.mp4", "file:///srv/media/acme/out/")
	bad := proxyJob("file:///srv/media/acme/a.mp4", "file:///srv/media/acme2/out/")
	_, err := f.srv.BatchCreateJobs(as("acme"), &jobsv1.BatchCreateJobsRequest{Requests: []*jobsv1.CreateJobRequest{{Job: ok}, {Job: bad}}})
	wantNotAllowed(t, "batch", err, "acme", "requests[1].job.input.locators[outputLocation]")
	if ids, err := f.store.IDs(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("jobs stored after a refused batch: %v, %v", ids, err)
	}
	resp, err := f.srv.BatchCreateJobs(as("acme"), &jobsv1.BatchCreateJobsRequest{Requests: []*jobsv1.CreateJobRequest{{Job: ok}}})
	if err != nil || resp.GetResults()[0].GetJob() == nil {
		t.Fatalf("batch under the roots: %v, %v", resp, err)
	}
}

// A restart runs the job's locators again: they must lie under the
// tenant's roots as they are now (roots withdrawn since, or a job older
// than them, are refused).
func TestLocatorRootsScopeRestarts(t *testing.T) {
	f, ts := rootsFixture(t)
	ctx := context.Background()
	if err := ts.EnsureTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.SetLocatorRoots(ctx, "acme", []string{"file:///srv/media/acme/"}); err != nil {
		t.Fatal(err)
	}
	created, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: proxyJob("file:///srv/media/acme/clip.mp4", "file:///srv/media/acme/out/")})
	if err != nil {
		t.Fatal(err)
	}
	job, rev, err := f.store.Get(ctx, created.GetId())
	if err != nil {
		t.Fatal(err)
	}
	job.Status = jobsv1.JobStatus_JOB_STATUS_FAILED
	if _, err := f.store.Update(ctx, job, rev); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.SetLocatorRoots(ctx, "acme", nil); err != nil {
		t.Fatal(err)
	}
	_, err = f.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: job.GetId()})
	wantNotAllowed(t, "restart after the roots were withdrawn", err, "acme", "job.input.locators[inputFile]")
	// Restarted, the job carries the roots it was checked against now,
	// to the processor (the restart's announcement) and in its record.
	if _, err := ts.SetLocatorRoots(ctx, "acme", []string{"file:///srv/media/acme/", "s3://shared/acme"}); err != nil {
		t.Fatal(err)
	}
	restarts := f.env.WatchEvents(t, bus.SubjectJobRestart)
	restarted, err := f.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: job.GetId()})
	if err != nil {
		t.Fatalf("restart under the roots again: %v", err)
	}
	want := []string{"file:///srv/media/acme/", "s3://shared/acme/"}
	if got := restarted.GetLocatorRoots().GetRoots(); !slices.Equal(got, want) {
		t.Fatalf("restarted job carries roots %q, want the tenant's now, %q", got, want)
	}
	var ev eventsv1.JobRestartRequested
	restarts.Next(&ev)
	if got := ev.GetLocatorRoots().GetRoots(); !slices.Equal(got, want) {
		t.Fatalf("restart announced with roots %q, want %q", got, want)
	}
	if rec, _, err := f.store.Get(ctx, job.GetId()); err != nil || !slices.Equal(rec.GetLocatorRoots().GetRoots(), want) {
		t.Fatalf("restarted record's roots: %q, %v; want %q", rec.GetLocatorRoots().GetRoots(), err, want)
	}
}

// Every job carries its tenant's roots to its workers, which hold every
// locator it resolves to them: a job naming no file:// or s3:// locator
// too (its profile may resolve one from a parameter only the worker
// reads), and a tenant with none carries an empty set, which allows
// nothing (not an absent one, which leaves the workers' roots alone). A
// client cannot choose them.
func TestLocatorRootsCarriedByJobs(t *testing.T) {
	f, ts := rootsFixture(t)
	ctx := context.Background()
	if _, err := ts.CreateTenant(ctx, tenants.Tenant{ID: "acme", LocatorRoots: []string{"file:///srv/media/acme", "s3://shared/acme/"}}); err != nil {
		t.Fatal(err)
	}
	if err := ts.EnsureTenant(ctx, "plain"); err != nil {
		t.Fatal(err)
	}
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	want := []string{"file:///srv/media/acme/", "s3://shared/acme/"}
	for _, tc := range []struct {
		tenant string
		job    *jobsv1.Job
		want   []string
	}{
		{"acme", proxyJob("file:///srv/media/acme/clip.mp4", "file:///srv/media/acme/out/"), want},
		{"acme", proxyJob("https://media.example.com/in.mp4", "https://media.example.com/put"), want},
		{"plain", proxyJob("https://media.example.com/in.mp4", "https://media.example.com/put"), []string{}},
	} {
		// Whatever the client sends is replaced.
		tc.job.LocatorRoots = &jobsv1.LocatorRoots{Roots: []string{"file:///"}}
		job, err := f.srv.CreateJob(as(tc.tenant), &jobsv1.CreateJobRequest{Job: tc.job})
		if err != nil {
			t.Fatal(err)
		}
		if job.GetLocatorRoots() == nil || !slices.Equal(job.GetLocatorRoots().GetRoots(), tc.want) {
			t.Fatalf("%s's job carries %v, want roots %q", tc.tenant, job.GetLocatorRoots(), tc.want)
		}
		var ev eventsv1.JobCreated
		created.Next(&ev)
		if lr := ev.GetJob().GetLocatorRoots(); lr == nil || !slices.Equal(lr.GetRoots(), tc.want) {
			t.Fatalf("%s's job announced with %v, want roots %q", tc.tenant, lr, tc.want)
		}
		if rec, _, err := f.store.Get(ctx, job.GetId()); err != nil || rec.GetLocatorRoots() == nil || !slices.Equal(rec.GetLocatorRoots().GetRoots(), tc.want) {
			t.Fatalf("%s's job stored with %v (%v), want roots %q", tc.tenant, rec.GetLocatorRoots(), err, tc.want)
		}
	}
}
