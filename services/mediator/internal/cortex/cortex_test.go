package cortex_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
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
	if job, ok := v.(map[string]any); ok {
		if out, ok := job["jobOutput"].(map[string]any); ok {
			s.checkJobOutput(out)
			// The base schema's additionalProperties: false holds for the
			// discriminator alone; the rest was checked against the subtype.
			job["jobOutput"] = map[string]any{"jobOutputType": out["jobOutputType"]}
		}
	}
	if err := mt.Schema.Value.VisitJSON(v); err != nil {
		s.t.Fatalf("%s %s %d: body %s does not validate: %v", method, path, code, body, err)
	}
}

// checkJobOutput validates a jobOutput as the spec's discriminator means
// it: JobOutput is the base of VideoAnalysisOutput and SpeechToTextOutput
// (allOf JobOutput plus their own properties), and jobOutputType names the
// one the object is. A strict JSON Schema reading of allOf with the base's
// additionalProperties: false would refuse every subtype property, the
// spec's own examples included, so the subtype's properties are merged
// into one closed object schema and the object validated against that.
func (s *spec) checkJobOutput(out map[string]any) {
	s.t.Helper()
	typ, _ := out["jobOutputType"].(string)
	ref := s.doc.Components.Schemas[typ]
	if ref == nil {
		s.t.Fatalf("jobOutputType %q names no schema of the spec", typ)
	}
	merged := openapi3.NewObjectSchema()
	no := false
	merged.AdditionalProperties = openapi3.AdditionalProperties{Has: &no}
	for _, part := range ref.Value.AllOf {
		for name, p := range part.Value.Properties {
			merged.Properties[name] = p
		}
		merged.Required = append(merged.Required, part.Value.Required...)
	}
	if len(merged.Properties) < 2 {
		s.t.Fatalf("schema %s is not a subtype of JobOutput", typ)
	}
	if err := merged.VisitJSON(out); err != nil {
		s.t.Fatalf("jobOutput %v does not validate as %s: %v", out, typ, err)
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

func setup(t *testing.T) *fixture { return setupWith(t, nil) }

// setupWith lets configure change the handler before it serves.
func setupWith(t *testing.T, configure func(*cortex.Handler)) *fixture {
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
	// As the mediator: s3:// locators (--cortex-s3) lie under the
	// project's roots; default's are in bucket b, other has none.
	jobs.SetLocatorRoots(ts)
	if _, err := ts.SetLocatorRoots(ctx, "default", []string{"s3://b/"}); err != nil {
		t.Fatal(err)
	}
	tokens := auth.NewTokens([]byte("test-signing-key-0123456789"), time.Hour)
	authn := auth.NewAuthenticator(auth.NewEtcdKeys(env.EtcdCli), auth.WithTokens(tokens, ts))
	rest := &restapi.API{Authn: authn, Tokens: tokens, Tenants: ts}
	h := &cortex.Handler{Jobs: jobs, Authn: authn, Tokens: rest}
	if configure != nil {
		configure(h)
	}
	mux := http.NewServeMux()
	h.Mount(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	// The real status consumer applies the processor's events, with the
	// quota and usage hooks the mediator installs.
	cons := statusconsumer.New(store)
	cons.OnTerminal(quota.New(env.EtcdCli).ReleaseEnded)
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
	resp, b := testsupport.HTTP(f.t, method, f.url+path, hdr, body, nil)
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

// publish reports a status of job id as the processor does.
func (f *fixture) publish(id string, st jobsv1.JobStatus, progress int32, qty float64, out *jobsv1.JobOutput) {
	f.t.Helper()
	ev := &eventsv1.JobStatusChanged{JobId: id, Status: st, Progress: progress, VerifiedQuantity: qty, Output: out,
		Execution: &jobsv1.Execution{Attempt: 1, Service: "medius-worker", Status: st}, Time: timestamppb.Now()}
	if err := bus.Publish(context.Background(), f.env.JS, bus.SubjectJobStatus(id), fmt.Sprintf("t-%s-%d-%d", id, st, progress), ev); err != nil {
		f.t.Fatal(err)
	}
}

// poll GETs job id until its status is want and returns the body.
func (f *fixture) poll(authz map[string]string, id, want string) []byte {
	f.t.Helper()
	var body []byte
	testsupport.Eventually(f.t, 10*time.Second, "status "+want, func() bool {
		code, b := f.do("GET", "/jobs/"+id, authz, "")
		if code != 200 {
			f.t.Fatalf("get: %d %s", code, b)
		}
		var got cortex.MediatorJob
		_ = json.Unmarshal(b, &got)
		body = b
		return got.Status.Status == want
	})
	return body
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
		job.GetInput().GetLocators()["outputFile"].GetUrl() != "https://media.example.com/out.json?sig=2" ||
		job.GetInput().GetLocators()["outputLocation"] != nil || job.GetTags()["cortex.s3.outputFile"] != "s3://b/out.json" ||
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
		var out *jobsv1.JobOutput
		if st == jobsv1.JobStatus_JOB_STATUS_COMPLETED {
			// What DetectShots reports having written.
			out = &jobsv1.JobOutput{Locators: map[string]*jobsv1.Locator{"outputFile": {Url: "https://media.example.com/out.json?sig=2"}}}
		}
		f.publish(mj.ID, st, progress, qty, out)
	}
	seen := []string{}
	poll := func(want string) cortex.MediatorJob {
		b := f.poll(authz, mj.ID, want)
		f.spec.check("get", "/jobs/{jobId}", 200, b)
		var got cortex.MediatorJob
		_ = json.Unmarshal(b, &got)
		seen = append(seen, got.Status.Status)
		return got
	}
	publish(jobsv1.JobStatus_JOB_STATUS_QUEUED, 0, 0)
	poll("QUEUED")
	publish(jobsv1.JobStatus_JOB_STATUS_SCHEDULED, 0, 0)
	poll("SCHEDULED")
	publish(jobsv1.JobStatus_JOB_STATUS_RUNNING, 42, 0)
	if got := poll("RUNNING"); got.Status.Progress != 42 || len(got.JobOutput) != 1 {
		t.Fatalf("running %+v", got)
	}
	publish(jobsv1.JobStatus_JOB_STATUS_COMPLETED, 100, 39.2)
	done := poll("COMPLETED")
	if done.Status.Progress != 100 || done.Quantity != 40 || done.JobOutput["jobOutputType"] != "VideoAnalysisOutput" {
		t.Fatalf("completed %+v", done)
	}
	// The output file, named as the client named it.
	if of, _ := done.JobOutput["outputFile"].(map[string]any); of["httpEndpoint"] != "https://media.example.com/out.json?sig=2" ||
		of["awsS3Bucket"] != "b" || of["awsS3Key"] != "out.json" {
		t.Fatalf("completed jobOutput %v, want the outputFile locator", done.JobOutput)
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
	// Quota: one job at a time, set before the job it counts (jobs admitted
	// while a tenant has no limit are not counted).
	if _, err := f.ts.SetQuota(context.Background(), "default", tenants.Quota{MaxConcurrentJobs: 1}); err != nil {
		t.Fatal(err)
	}
	// SpeechToText: each format asked for travels as its own locator.
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
	if err != nil || stt.GetProfile() != "SpeechToText" || stt.GetInput().GetLocators()["srtOutputFile"].GetUrl() != "https://media.example.com/o.srt" ||
		len(stt.GetInput().GetLocators()) != 2 || stt.GetTags()["cortex.s3.srtFormat"] != "s3://b/o.srt" {
		t.Fatalf("speech job %v %v", stt, err)
	}

	// Over quota: the spec answers a quota violation with 502.
	code, b = f.do("POST", "/jobs", authz, videoJob("default", `"another"`))
	wantProblem(t, "over quota", code, b, 502, "")
	f.spec.check("post", "/jobs", code, b)
	var p map[string]any
	_ = json.Unmarshal(b, &p)
	if p["type"] != problem.TypePrefix+quota.TypeConcurrent {
		t.Fatalf("quota problem %s", b)
	}
}

// speechJob asks for the given SpeechToTextOutput formats.
func speechJob(outputLocation string) string {
	return fmt.Sprintf(`{
  "projectServiceId": "default", "quantity": 12,
  "job": {
    "jobType": "AIJob", "jobProfile": "MediaCortexSpeechToText",
    "jobInput": {
      "jobInputType": "SpeechToTextInput", "language": "English",
      "inputFile": {"awsS3Bucket": "b", "awsS3Key": "talk.wav", "httpEndpoint": "https://media.example.com/talk.wav?sig=0"},
      "outputLocation": %s
    }
  }
}`, outputLocation)
}

// Each requested format travels as its own locator, no folder is made up,
// and a COMPLETED job lists what the worker wrote, as the client named it.
func TestCortexSpeechOutputs(t *testing.T) {
	f := setupWith(t, func(h *cortex.Handler) { h.S3 = true })
	authz := map[string]string{"Authorization": f.token("default-client", "default-secret-0123456789")}
	submit := func(outputLocation string) (string, *jobsv1.Job) {
		code, b := f.do("POST", "/jobs", authz, speechJob(outputLocation))
		if code != 201 {
			t.Fatalf("create: %d %s", code, b)
		}
		f.spec.check("post", "/jobs", code, b)
		var mj cortex.MediatorJob
		_ = json.Unmarshal(b, &mj)
		job, _, err := f.store.Get(context.Background(), mj.ID)
		if err != nil {
			t.Fatal(err)
		}
		return mj.ID, job
	}
	locators := func(j *jobsv1.Job) map[string]string {
		m := map[string]string{}
		for k, l := range j.GetInput().GetLocators() {
			m[k] = l.GetUrl()
		}
		return m
	}

	// As the spec has it: jobOutputType, and every locator with bucket, key
	// and signed URL.
	id, job := submit(`{
	  "jobOutputType": "SpeechToTextOutput",
	  "srtFormat": {"awsS3Bucket": "b", "awsS3Key": "subs/abc.srt", "httpEndpoint": "https://media.example.com/upload/abc.srt?sig=123"},
	  "ttmlFormat": {"awsS3Bucket": "b", "awsS3Key": "other/x.ttml", "httpEndpoint": "https://media.example.com/other/x.ttml?sig=456"}}`)
	want := map[string]string{
		"inputFile":      "https://media.example.com/talk.wav?sig=0",
		"srtOutputFile":  "https://media.example.com/upload/abc.srt?sig=123",
		"ttmlOutputFile": "https://media.example.com/other/x.ttml?sig=456",
	}
	if got := locators(job); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("job locators %v, want %v", got, want)
	}
	f.publish(id, jobsv1.JobStatus_JOB_STATUS_RUNNING, 50, 0, nil)
	b := f.poll(authz, id, "RUNNING")
	f.spec.check("get", "/jobs/{jobId}", 200, b)
	var running cortex.MediatorJob
	_ = json.Unmarshal(b, &running)
	if fmt.Sprint(running.JobOutput) != "map[jobOutputType:SpeechToTextOutput]" {
		t.Fatalf("running jobOutput %v, want only the type", running.JobOutput)
	}
	f.publish(id, jobsv1.JobStatus_JOB_STATUS_COMPLETED, 100, 11.5, &jobsv1.JobOutput{Locators: map[string]*jobsv1.Locator{
		"srtOutputFile":  {Url: want["srtOutputFile"]},
		"ttmlOutputFile": {Url: want["ttmlOutputFile"]},
		// Not a Cortex format: not listed.
		"webVttOutputFile": {Url: "https://media.example.com/x.vtt"},
	}})
	b = f.poll(authz, id, "COMPLETED")
	f.spec.check("get", "/jobs/{jobId}", 200, b)
	var done struct {
		JobOutput map[string]json.RawMessage `json:"jobOutput"`
	}
	_ = json.Unmarshal(b, &done)
	wantOut := map[string]string{
		"jobOutputType": `"SpeechToTextOutput"`,
		"srtFormat":     `{"awsS3Bucket":"b","awsS3Key":"subs/abc.srt","httpEndpoint":"https://media.example.com/upload/abc.srt?sig=123"}`,
		"ttmlFormat":    `{"awsS3Bucket":"b","awsS3Key":"other/x.ttml","httpEndpoint":"https://media.example.com/other/x.ttml?sig=456"}`,
	}
	if len(done.JobOutput) != len(wantOut) {
		t.Fatalf("jobOutput %s, want %v", b, wantOut)
	}
	for k, v := range wantOut {
		if string(done.JobOutput[k]) != v {
			t.Errorf("jobOutput.%s = %s, want %s", k, done.JobOutput[k], v)
		}
	}

	// Leaner locators, as some clients send them: an S3 object alone (this
	// deployment reaches S3) and a signed URL alone. They come back as
	// given (which the spec's Locator, requiring all three fields, would
	// not accept from either side).
	id, job = submit(`{
	  "textFormat": {"awsS3Bucket": "b", "awsS3Key": "t/talk.txt"},
	  "draftjsFormat": {"httpEndpoint": "https://media.example.com/d.json?sig=9"}}`)
	if got := locators(job); got["textOutputFile"] != "s3://b/t/talk.txt" || got["draftjsOutputFile"] != "https://media.example.com/d.json?sig=9" || len(got) != 3 {
		t.Fatalf("job locators %v", got)
	}
	f.publish(id, jobsv1.JobStatus_JOB_STATUS_COMPLETED, 100, 11.5, &jobsv1.JobOutput{Locators: map[string]*jobsv1.Locator{
		"textOutputFile":    {Url: "s3://b/t/talk.txt"},
		"draftjsOutputFile": {Url: "https://media.example.com/d.json?sig=9"},
	}})
	b = f.poll(authz, id, "COMPLETED")
	var lean struct {
		JobOutput map[string]map[string]string `json:"jobOutput"`
	}
	_ = json.Unmarshal(b, &lean)
	if fmt.Sprint(lean.JobOutput["textFormat"]) != "map[awsS3Bucket:b awsS3Key:t/talk.txt]" ||
		fmt.Sprint(lean.JobOutput["draftjsFormat"]) != "map[httpEndpoint:https://media.example.com/d.json?sig=9]" {
		t.Fatalf("jobOutput %s", b)
	}

	// No format at all, or not an object: 400 naming outputLocation.
	for _, out := range []string{`{}`, `{"webVttFormat": {"httpEndpoint": "https://media.example.com/x.vtt"}}`, `"https://media.example.com/"`} {
		code, b := f.do("POST", "/jobs", authz, speechJob(out))
		wantProblem(t, "outputLocation "+out, code, b, 400, "job.jobInput.outputLocation")
	}
}

// With --cortex-s3, a locator given as awsS3Bucket/awsS3Key must lie under
// the project's locator roots, as any s3:// locator: else 400 (the spec's
// refusals of POST /jobs) of type locator-not-allowed, naming the Cortex
// field.
func TestCortexLocatorRoots(t *testing.T) {
	f := setupWith(t, func(h *cortex.Handler) { h.S3 = true })
	s3Only := func(body, field, bucket, key string) string {
		t.Helper()
		re := regexp.MustCompile(`"` + field + `": \{[^}]*\}`)
		if !re.MatchString(body) {
			t.Fatalf("no %s in %s", field, body)
		}
		return re.ReplaceAllString(body, fmt.Sprintf(`"%s": {"awsS3Bucket": %q, "awsS3Key": %q}`, field, bucket, key))
	}
	for _, c := range []struct {
		name, client, body, field string
	}{
		{"a project without roots", "other", s3Only(videoJob("other", "{}"), "inputFile", "b", "00000132.mp4"), "job.jobInput.inputFile"},
		{"an input in another bucket", "default", s3Only(videoJob("default", "{}"), "inputFile", "c", "00000132.mp4"), "job.jobInput.inputFile"},
		{"an input key leaving its prefix", "default", s3Only(videoJob("default", "{}"), "inputFile", "b", "x/../y.mp4"), "job.jobInput.inputFile"},
		{"an output in another bucket", "default", s3Only(videoJob("default", "{}"), "outputLocation", "c", "out.json"), "job.jobInput.outputLocation"},
		{"a speech format in another bucket", "default", speechJob(`{"srtFormat": {"awsS3Bucket": "c", "awsS3Key": "o.srt"}}`), "job.jobInput.outputLocation.srtFormat"},
	} {
		authz := map[string]string{"Authorization": f.token(c.client+"-client", c.client+"-secret-0123456789")}
		code, b := f.do("POST", "/jobs", authz, c.body)
		wantProblem(t, c.name, code, b, 400, c.field)
		f.spec.check("post", "/jobs", code, b)
		if !strings.Contains(string(b), "locator-not-allowed") {
			t.Fatalf("%s: %s, want type locator-not-allowed", c.name, b)
		}
	}
	if ids, err := f.store.IDs(context.Background()); err != nil || len(ids) != 0 {
		t.Fatalf("refused jobs stored: %v, %v", ids, err)
	}
	authz := map[string]string{"Authorization": f.token("default-client", "default-secret-0123456789")}
	if code, b := f.do("POST", "/jobs", authz, s3Only(s3Only(videoJob("default", "{}"), "inputFile", "b", "in/x.mp4"), "outputLocation", "b", "out/x.json")); code != 201 {
		t.Fatalf("s3 locators under the project's roots: %d %s", code, b)
	}
}
