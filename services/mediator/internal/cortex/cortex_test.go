package cortex_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"github.com/medius-platform/medius/services/mediator/internal/cortex"
	"github.com/medius-platform/medius/services/mediator/internal/jobapi"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/medius-platform/medius/services/mediator/internal/quota"
	"github.com/medius-platform/medius/services/mediator/internal/restapi"
	"github.com/medius-platform/medius/services/mediator/internal/statusconsumer"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"github.com/medius-platform/medius/services/mediator/internal/usage"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// profiles stands in for the service registry (a separate service).
type profiles map[string]*registryv1.JobProfile

func (p profiles) GetJobProfile(_ context.Context, name string) (*registryv1.JobProfile, error) {
	if pr, ok := p[name]; ok {
		return pr, nil
	}
	return nil, jobapi.ErrProfileNotFound
}

// spec validates responses against the Cortex OpenAPI document.
type spec struct {
	t   *testing.T
	doc *openapi3.T
}

func loadSpec(t *testing.T) *spec {
	doc, err := openapi3.NewLoader().LoadFromFile("testdata/dalet-cortex-openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// The spec's own examples break it (tracking: "{}" where an object is
	// declared), so only its structure is checked.
	if err := doc.Validate(context.Background(), openapi3.DisableExamplesValidation()); err != nil {
		t.Fatalf("spec: %v", err)
	}
	return &spec{t: t, doc: doc}
}

// check validates body as the answer of method path with code, as the spec
// documents it (a documented code without a body schema only checks the
// code).
func (s *spec) check(method, path string, code int, body []byte) {
	s.t.Helper()
	item := s.doc.Paths.Find(path)
	if item == nil {
		s.t.Fatalf("no path %s in spec", path)
	}
	op := item.GetOperation(strings.ToUpper(method))
	resp := op.Responses.Status(code)
	if resp == nil {
		s.t.Fatalf("%s %s answered %d, which the spec does not document: %s", method, path, code, body)
	}
	mt := resp.Value.Content.Get("application/json")
	if mt == nil {
		return
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		s.t.Fatalf("%s %s: body not JSON: %s", method, path, body)
	}
	if err := mt.Schema.Value.VisitJSON(v); err != nil {
		s.t.Fatalf("%s %s %d: body %s does not validate: %v", method, path, code, body, err)
	}
}

type fixture struct {
	t     *testing.T
	env   *testsupport.Env
	url   string
	spec  *spec
	store *jobstore.Store
	ts    *tenants.Store
}

func setup(t *testing.T) *fixture {
	env := testsupport.Start(t)
	ts := tenants.New(env.EtcdCli)
	ctx := context.Background()
	for _, id := range []string{"default", "other"} {
		if err := ts.EnsureTenant(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := ts.PutKey(ctx, id, id+"-client", id+"-secret-0123456789", ""); err != nil {
			t.Fatal(err)
		}
	}
	store := jobstore.New(env.Jobs)
	jobs, err := jobapi.New(store, env.JS, profiles{
		"DetectShots":  {Name: "DetectShots", JobType: "AIJob", InputParameters: []*registryv1.ParameterSpec{{Name: "inputFile"}}},
		"SpeechToText": {Name: "SpeechToText", JobType: "AIJob", InputParameters: []*registryv1.ParameterSpec{{Name: "inputFile"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	jobs.SetAdmission(quota.TenantAdmitter{Admitter: quota.New(env.EtcdCli), Tenants: ts})
	tokens := auth.NewTokens([]byte("test-signing-key-0123456789"), time.Hour)
	authn := auth.NewAuthenticator(auth.NewEtcdKeys(env.EtcdCli), auth.WithTokens(tokens, ts))
	rest := &restapi.API{Authn: authn, Tokens: tokens, Tenants: ts}
	h := &cortex.Handler{Jobs: jobs, Authn: authn, Tokens: rest}
	mux := http.NewServeMux()
	h.Mount(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	// The real status consumer applies the processor's events, with the
	// quota and usage hooks the mediator installs.
	cons := statusconsumer.New(store)
	cons.OnTerminal(func(ctx context.Context, j *jobsv1.Job) error {
		return quota.New(env.EtcdCli).Release(ctx, j.GetTenant(), j.GetId())
	})
	us := usage.New(env.EtcdCli)
	cons.OnTerminal(func(ctx context.Context, j *jobsv1.Job) error { _, err := us.RecordJob(ctx, j); return err })
	cctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = cons.Run(cctx, env.JS) }()
	t.Cleanup(func() { cancel(); <-done })
	return &fixture{t: t, env: env, url: srv.URL + cortex.Prefix, spec: loadSpec(t), store: store, ts: ts}
}

func (f *fixture) do(method, path string, hdr map[string]string, body string) (int, []byte) {
	f.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.url+path, r)
	if err != nil {
		f.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (f *fixture) token(client, secret string) string {
	f.t.Helper()
	code, b := f.do("POST", "/auth/access-token", map[string]string{"client": client, "secret": secret}, "")
	if code != 201 {
		f.t.Fatalf("access-token: %d %s", code, b)
	}
	f.spec.check("post", "/auth/access-token", code, b)
	var tok cortex.Token
	_ = json.Unmarshal(b, &tok)
	if !strings.HasPrefix(tok.Authorization, "Bearer ") || tok.Expires < 3590 || tok.Expires > 3600 {
		f.t.Fatalf("token %s", b)
	}
	return tok.Authorization
}

func wantProblem(t *testing.T, what string, code int, b []byte, wantCode int, field string) {
	t.Helper()
	var p map[string]any
	if code != wantCode || json.Unmarshal(b, &p) != nil || p["status"] != float64(wantCode) || p["detail"] == "" {
		t.Fatalf("%s: %d %s, want a %d problem", what, code, b, wantCode)
	}
	if field != "" && p["field"] != field {
		t.Fatalf("%s: field %v, want %s", what, p["field"], field)
	}
}

// videoJob is the spec's MediatorJobPost example made whole (the example
// lacks the required top-level fields), plus a field the schema does not
// know, which clients may send.
func videoJob(project, tracking string) string {
	return fmt.Sprintf(`{
  "projectServiceId": %q, "quantity": 40, "tracking": %s, "someFutureField": {"x": 1},
  "notificationEndpoint": "https://example.com/hook",
  "job": {
    "jobType": "AIJob", "jobProfile": "MediaCortexVideoAnalysis",
    "jobInput": {
      "jobInputType": "VideoAnalysisInput",
      "inputFile": {"awsS3Bucket": "b", "awsS3Key": "00000132.mp4", "httpEndpoint": "https://media.example.com/00000132.mp4?sig=1"},
      "outputLocation": {"awsS3Bucket": "b", "awsS3Key": "out.json", "httpEndpoint": "https://media.example.com/out.json?sig=2"},
      "dataFilter": ["ocr", "shots"], "language": "English"
    }
  }
}`, project, tracking)
}

func TestCortexFlow(t *testing.T) {
	f := setup(t)
	code, b := f.do("POST", "/auth/access-token", map[string]string{"client": "default-client", "secret": "wrong-secret-0123456789"}, "")
	if code != 401 {
		t.Fatalf("bad secret: %d %s", code, b)
	}
	f.spec.check("post", "/auth/access-token", code, b)
	bearer := f.token("default-client", "default-secret-0123456789")
	authz := map[string]string{"Authorization": bearer}

	// Submit: 201 MediatorJob, NEW, integer progress and quantity.
	code, b = f.do("POST", "/jobs", authz, videoJob("default", `{"titleId":"62236","titleName":"Short"}`))
	if code != 201 {
		t.Fatalf("create: %d %s", code, b)
	}
	f.spec.check("post", "/jobs", code, b)
	var mj cortex.MediatorJob
	_ = json.Unmarshal(b, &mj)
	if mj.Status.Status != "NEW" || mj.JobOutput["jobOutputType"] != "VideoAnalysisOutput" || mj.ID == "" {
		t.Fatalf("created %s", b)
	}
	job, _, err := f.store.Get(context.Background(), mj.ID)
	if err != nil {
		t.Fatal(err)
	}
	if job.GetProfile() != "DetectShots" || job.GetTenant() != "default" || job.GetNotificationEndpoint() != "https://example.com/hook" ||
		job.GetInput().GetLocators()["inputFile"].GetUrl() != "https://media.example.com/00000132.mp4?sig=1" ||
		job.GetInput().GetLocators()["outputLocation"].GetUrl() != "https://media.example.com/out.json?sig=2" ||
		job.GetInput().GetParameters().GetFields()["language"].GetStringValue() != "English" ||
		job.GetTracking().GetStructValue().GetFields()["titleId"].GetStringValue() != "62236" {
		t.Fatalf("medius job %v", job)
	}

	// The same tracking and profile again: the same job.
	code, b = f.do("POST", "/jobs", authz, videoJob("default", `{"titleName":"Short","titleId":"62236"}`))
	var again cortex.MediatorJob
	_ = json.Unmarshal(b, &again)
	if code != 201 || again.ID != mj.ID {
		t.Fatalf("repeat: %d %s, want job %s", code, b, mj.ID)
	}
	// Any JSON is accepted as tracking.
	for _, tr := range []string{`"a-string-id"`, `[1,2]`, `42`} {
		if code, b := f.do("POST", "/jobs", authz, videoJob("default", tr)); code != 201 {
			t.Fatalf("tracking %s: %d %s", tr, code, b)
		}
	}

	// The processor reports; every poll validates and moves forward to
	// COMPLETED with the verified quantity.
	publish := func(st jobsv1.JobStatus, progress int32, qty float64) {
		ev := &eventsv1.JobStatusChanged{JobId: mj.ID, Status: st, Progress: progress, VerifiedQuantity: qty,
			Execution: &jobsv1.Execution{Attempt: 1, Service: "medius-worker", Status: st}, Time: timestamppb.Now()}
		if err := bus.Publish(context.Background(), f.env.JS, bus.SubjectJobStatus(mj.ID), fmt.Sprintf("t-%s-%d-%d", mj.ID, st, progress), ev); err != nil {
			t.Fatal(err)
		}
	}
	seen := []string{}
	poll := func(want string) cortex.MediatorJob {
		var got cortex.MediatorJob
		testsupport.Eventually(t, 10*time.Second, "status "+want, func() bool {
			code, b := f.do("GET", "/jobs/"+mj.ID, authz, "")
			if code != 200 {
				t.Fatalf("get: %d %s", code, b)
			}
			f.spec.check("get", "/jobs/{jobId}", code, b)
			got = cortex.MediatorJob{}
			_ = json.Unmarshal(b, &got)
			return got.Status.Status == want
		})
		seen = append(seen, got.Status.Status)
		return got
	}
	publish(jobsv1.JobStatus_JOB_STATUS_QUEUED, 0, 0)
	poll("QUEUED")
	publish(jobsv1.JobStatus_JOB_STATUS_SCHEDULED, 0, 0)
	poll("SCHEDULED")
	publish(jobsv1.JobStatus_JOB_STATUS_RUNNING, 42, 0)
	if got := poll("RUNNING"); got.Status.Progress != 42 {
		t.Fatalf("running progress %d", got.Status.Progress)
	}
	publish(jobsv1.JobStatus_JOB_STATUS_COMPLETED, 100, 39.2)
	done := poll("COMPLETED")
	if done.Status.Progress != 100 || done.Quantity != 40 || done.JobOutput["jobOutputType"] != "VideoAnalysisOutput" {
		t.Fatalf("completed %+v", done)
	}
	t.Logf("statuses seen: %v", seen)

	// Usage was recorded once.
	testsupport.Eventually(t, 10*time.Second, "usage recorded", func() bool {
		recs, err := usage.New(f.env.EtcdCli).Records(context.Background(), "default", time.Time{}, time.Time{})
		return err == nil && len(recs) == 1 && recs[0].Quantity == 39.2 && recs[0].Profile == "DetectShots"
	})

	// Another project's token: the job does not exist for it.
	other := map[string]string{"Authorization": f.token("other-client", "other-secret-0123456789")}
	code, b = f.do("GET", "/jobs/"+mj.ID, other, "")
	wantProblem(t, "other tenant's job", code, b, 404, "")
	f.spec.check("get", "/jobs/{jobId}", code, b)
	// And it cannot submit for the default project.
	code, b = f.do("POST", "/jobs", other, videoJob("default", `{}`))
	wantProblem(t, "foreign projectServiceId", code, b, 400, "projectServiceId")

	// Job types.
	code, b = f.do("GET", "/job-types", map[string]string{"Authorization": bearer, "ProjectServiceId": "default"}, "")
	if code != 200 || !strings.Contains(string(b), cortex.ProfileSpeechToText) {
		t.Fatalf("job-types: %d %s", code, b)
	}
	f.spec.check("get", "/job-types", code, b)
	code, b = f.do("GET", "/job-types", authz, "")
	wantProblem(t, "job-types without ProjectServiceId", code, b, 400, "ProjectServiceId")
}

func TestCortexErrors(t *testing.T) {
	f := setup(t)
	authz := map[string]string{"Authorization": f.token("default-client", "default-secret-0123456789")}
	for _, c := range []struct {
		name, body, field string
	}{
		{"missing projectServiceId", strings.Replace(videoJob("default", "{}"), `"projectServiceId": "default",`, "", 1), "projectServiceId"},
		{"missing quantity", strings.Replace(videoJob("default", "{}"), `"quantity": 40,`, "", 1), "quantity"},
		{"missing job", `{"projectServiceId":"default","quantity":1}`, "job"},
		{"missing input file", strings.Replace(videoJob("default", "{}"), `"inputFile"`, `"inputFil"`, 1), "job.jobInput.inputFile"},
		{"missing output location", strings.Replace(videoJob("default", "{}"), `"outputLocation"`, `"outputLocatio"`, 1), "job.jobInput.outputLocation"},
		{"unknown profile", strings.Replace(videoJob("default", "{}"), `MediaCortexVideoAnalysis`, `ClusterFaces`, 1), "job.jobProfile"},
		{"s3 without endpoint", strings.Replace(videoJob("default", "{}"), `"httpEndpoint": "https://media.example.com/00000132.mp4?sig=1"`, `"httpEndpoint": ""`, 1), "job.jobInput.inputFile.httpEndpoint"},
	} {
		code, b := f.do("POST", "/jobs", authz, c.body)
		wantProblem(t, c.name, code, b, 400, c.field)
		f.spec.check("post", "/jobs", code, b)
	}
	// No token, a bad token: 401.
	for _, hdr := range []map[string]string{nil, {"Authorization": "Bearer nope"}} {
		code, b := f.do("POST", "/jobs", hdr, videoJob("default", "{}"))
		wantProblem(t, "unauthenticated", code, b, 401, "")
		f.spec.check("post", "/jobs", code, b)
	}
	// A Medius profile the registry does not know: a clear 400 naming it.
	speech := strings.NewReplacer(`MediaCortexVideoAnalysis`, `MediaCortexSpeechToText`,
		`"outputLocation": {"awsS3Bucket": "b", "awsS3Key": "out.json", "httpEndpoint": "https://media.example.com/out.json?sig=2"}`,
		`"outputLocation": {"srtFormat": {"awsS3Bucket": "b", "awsS3Key": "o.srt", "httpEndpoint": "https://media.example.com/o.srt"}}`).Replace(videoJob("default", "{}"))
	code, b := f.do("POST", "/jobs", authz, speech)
	if code != 201 {
		t.Fatalf("speech to text: %d %s", code, b)
	}
	var sj cortex.MediatorJob
	_ = json.Unmarshal(b, &sj)
	stt, _, err := f.store.Get(context.Background(), sj.ID)
	if err != nil || stt.GetProfile() != "SpeechToText" || stt.GetInput().GetLocators()["srtFormat"].GetUrl() != "https://media.example.com/o.srt" ||
		stt.GetInput().GetLocators()["outputLocation"].GetUrl() != "https://media.example.com/" {
		t.Fatalf("speech job %v %v", stt, err)
	}

	// Quota: the spec answers a quota violation with 502.
	if _, err := f.ts.SetQuota(context.Background(), "default", tenants.Quota{MaxConcurrentJobs: 1}); err != nil {
		t.Fatal(err)
	}
	code, b = f.do("POST", "/jobs", authz, videoJob("default", `"another"`))
	wantProblem(t, "over quota", code, b, 502, "")
	f.spec.check("post", "/jobs", code, b)
	var p map[string]any
	_ = json.Unmarshal(b, &p)
	if p["type"] != problem.TypePrefix+quota.TypeConcurrent {
		t.Fatalf("quota problem %s", b)
	}
}
