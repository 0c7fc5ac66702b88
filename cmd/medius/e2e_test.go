package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/medius-platform/medius/cmd/medius/internal/cli"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/devstack"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/pkg/jobstate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const apiKey = "mk_e2e_test_key"

// platform is a running dev stack with a media fixture, shared by the
// end-to-end subtests.
type platform struct {
	stack    *devstack.Stack
	mediaDir string
	clip     string // a 3 s H.264/AAC clip
	grpc     jobsv1.JobServiceClient
}

func setup(t testing.TB) *platform {
	t.Helper()
	for _, tool := range []string{"ffmpeg", "ffprobe"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install Debian package ffmpeg (make test does this when run as root)", tool)
		}
	}
	bin := devstack.BuildBinaries(t)
	dir := t.TempDir()
	media := filepath.Join(dir, "media")
	if err := os.MkdirAll(media, 0o755); err != nil {
		t.Fatal(err)
	}
	clip := filepath.Join(media, "clip.mp4")
	out, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error",
		"-f", "lavfi", "-i", "testsrc=duration=3:size=320x240:rate=25",
		"-f", "lavfi", "-i", "sine=frequency=440:duration=3:sample_rate=48000",
		"-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", clip).CombinedOutput()
	if err != nil {
		t.Fatalf("make fixture: %v\n%s", err, out)
	}
	stack := devstack.StartForTest(t, devstack.Config{BinDir: bin, Dir: filepath.Join(dir, "stack"), APIKey: apiKey, FileRoots: []string{media}})
	cc, err := grpcx.Dial(stack.GRPCAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &platform{stack: stack, mediaDir: media, clip: clip, grpc: jobsv1.NewJobServiceClient(cc)}
}

func TestEndToEnd(t *testing.T) {
	p := setup(t)

	t.Run("REST job completes with real metadata", func(t *testing.T) {
		start := time.Now()
		code, body := p.rest(t, "POST", "/v1/jobs", apiKey, fmt.Sprintf(
			`{"profile":"ExtractTechnicalMetadata","input":{"locators":{"inputFile":{"url":"file://%s"}}}}`, p.clip))
		if code != http.StatusOK {
			t.Fatalf("create: %d %s", code, body)
		}
		var created map[string]any
		mustJSON(t, body, &created)
		id, _ := created["id"].(string)
		if id == "" {
			t.Fatalf("no id in %s", body)
		}
		job := p.waitREST(t, id)
		t.Logf("REST job %s COMPLETED in %s", id, time.Since(start).Round(time.Millisecond))
		if job["status"] != "JOB_STATUS_COMPLETED" {
			t.Fatalf("job ended %v: %s", job["status"], mustMarshal(job))
		}
		data, _ := dig(job, "output", "data", "technicalMetadata").(map[string]any)
		checkMetadata(t, data)
		if q, _ := job["verifiedQuantity"].(float64); math.Abs(q-3) > 0.2 {
			t.Errorf("verifiedQuantity = %v, want ~3 s", job["verifiedQuantity"])
		}
	})

	t.Run("gRPC job completes with real metadata", func(t *testing.T) {
		ctx := p.authed(context.Background(), apiKey)
		job, err := p.grpc.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: &jobsv1.Job{
			Profile: "ExtractTechnicalMetadata",
			Input:   &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{"inputFile": {Url: "file://" + p.clip}}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		job = p.waitGRPC(t, job.Id)
		if job.Status != jobsv1.JobStatus_JOB_STATUS_COMPLETED {
			t.Fatalf("job ended %s: %v", jobstate.Name(job.Status), job.Error)
		}
		data, _ := job.Output.GetData().AsMap()["technicalMetadata"].(map[string]any)
		checkMetadata(t, data)
		if len(job.Executions) == 0 || job.Executions[len(job.Executions)-1].InstanceId == "" {
			t.Errorf("executions do not name the instance: %v", job.Executions)
		}
	})

	t.Run("unknown profile is refused naming it", func(t *testing.T) {
		code, body := p.rest(t, "POST", "/v1/jobs", apiKey, `{"profile":"NoSuchProfile"}`)
		prob := checkProblem(t, code, body, http.StatusBadRequest)
		if prob["field"] != "job.profile" || !strings.Contains(fmt.Sprint(prob["detail"]), "NoSuchProfile") {
			t.Errorf("problem does not name the profile: %s", body)
		}
		_, err := p.grpc.CreateJob(p.authed(context.Background(), apiKey), &jobsv1.CreateJobRequest{Job: &jobsv1.Job{Profile: "NoSuchProfile"}})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "NoSuchProfile") {
			t.Errorf("gRPC: %v, want InvalidArgument naming the profile", err)
		}
	})

	t.Run("missing or wrong key is unauthenticated", func(t *testing.T) {
		for _, key := range []string{"", "mk_wrong"} {
			code, body := p.rest(t, "GET", "/v1/jobs", key, "")
			checkProblem(t, code, body, http.StatusUnauthorized)
			_, err := p.grpc.ListJobs(p.authed(context.Background(), key), &jobsv1.ListJobsRequest{})
			if status.Code(err) != codes.Unauthenticated {
				t.Errorf("gRPC with key %q: %v, want Unauthenticated", key, err)
			}
		}
	})

	t.Run("malformed JSON is a 400 problem", func(t *testing.T) {
		code, body := p.rest(t, "POST", "/v1/jobs", apiKey, `{"profile": "ExtractTechnicalMetadata",`)
		checkProblem(t, code, body, http.StatusBadRequest)
	})

	t.Run("missing input file fails the job naming the input", func(t *testing.T) {
		missing := filepath.Join(p.mediaDir, "nope.mp4")
		job := p.submitGRPC(t, "file://"+missing)
		if job.Status != jobsv1.JobStatus_JOB_STATUS_FAILED || job.Error == nil {
			t.Fatalf("job ended %s, error %v", jobstate.Name(job.Status), job.Error)
		}
		if !strings.Contains(job.Error.Type, "input-not-found") || !strings.Contains(job.Error.Detail, "nope.mp4") {
			t.Errorf("problem does not name the input: %+v", job.Error)
		}
	})

	t.Run("file path outside the tenant's roots is refused", func(t *testing.T) {
		// The mediator refuses a locator outside the tenant's locator roots
		// (the dev stack gives the default tenant its file roots) before
		// creating anything.
		for _, url := range []string{"file:///etc/passwd", "file://" + p.mediaDir + "/../../../etc/passwd", "file://" + p.mediaDir + "2/clip.mp4"} {
			code, body := p.rest(t, "POST", "/v1/jobs", apiKey, fmt.Sprintf(`{"profile":"ExtractTechnicalMetadata","input":{"locators":{"inputFile":{"url":%q}}}}`, url))
			prob := checkProblem(t, code, body, http.StatusForbidden)
			if prob["type"] != "urn:medius:problem:locator-not-allowed" || prob["field"] != "job.input.locators[inputFile]" ||
				!strings.Contains(fmt.Sprint(prob["detail"]), `tenant "default"`) {
				t.Errorf("%s: %s, want locator-not-allowed naming the field and the tenant", url, body)
			}
			_, err := p.grpc.CreateJob(p.authed(context.Background(), apiKey), &jobsv1.CreateJobRequest{Job: &jobsv1.Job{
				Profile: "ExtractTechnicalMetadata",
				Input:   &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{"inputFile": {Url: url}}},
			}})
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("%s over gRPC: %v, want PermissionDenied", url, err)
			}
		}
		// The worker still confines file:// to its --file-roots whatever
		// roots an admin grants: a tenant granted file:/// has its job fail.
		code, body := p.rest(t, "POST", "/v1/tenants", p.stack.AdminKey, `{"id":"wide","locatorRoots":["file:///"]}`)
		if code != http.StatusCreated {
			t.Fatalf("create tenant: %d %s", code, body)
		}
		code, body = p.rest(t, "POST", "/v1/tenants/wide/keys", p.stack.AdminKey, "")
		var key struct{ ClientSecret string }
		if code != http.StatusCreated || json.Unmarshal(body, &key) != nil {
			t.Fatalf("create key: %d %s", code, body)
		}
		job := p.submitGRPCAs(t, key.ClientSecret, "file:///etc/passwd")
		if job.Status != jobsv1.JobStatus_JOB_STATUS_FAILED || job.Error == nil || !strings.Contains(job.Error.Type, "locator-forbidden") {
			t.Errorf("job ended %s, error %+v; want FAILED locator-forbidden", jobstate.Name(job.Status), job.Error)
		}
	})

	t.Run("CLI submits, waits and reports failure in its exit status", func(t *testing.T) {
		run := func(args ...string) (string, error) {
			var out bytes.Buffer
			cmd := cli.New()
			cmd.SetArgs(append(args, "--server", p.stack.GRPCAddr, "--api-key", apiKey))
			cmd.SetOut(&out)
			cmd.SetErr(io.Discard)
			err := cmd.ExecuteContext(context.Background())
			return out.String(), err
		}
		out, err := run("jobs", "submit", "--profile", "ExtractTechnicalMetadata", "--input", "inputFile=file://"+p.clip, "--wait", "-o", "json")
		var job map[string]any
		if err != nil || json.Unmarshal([]byte(out), &job) != nil || job["status"] != "JOB_STATUS_COMPLETED" {
			t.Errorf("submit --wait: %v\n%s", err, out)
		} else if data, _ := dig(job, "output", "data", "technicalMetadata").(map[string]any); data != nil {
			checkMetadata(t, data)
		} else {
			t.Errorf("no technicalMetadata in %s", out)
		}
		out, err = run("jobs", "submit", "--profile", "ExtractTechnicalMetadata", "--input", "inputFile=file://"+p.mediaDir+"/nope.mp4", "--wait")
		if err == nil || !strings.Contains(out, "FAILED") {
			t.Errorf("failed job: err %v, output %s; want an error and FAILED", err, out)
		}
		if _, err = run("jobs", "submit", "--profile", "ExtractTechnicalMetadata", "--input", "inputFile=file:///etc/passwd"); err == nil ||
			!strings.Contains(cli.Describe(err), "(locator-not-allowed)") || !strings.Contains(cli.Describe(err), "(field job.input.locators[inputFile])") {
			t.Errorf("a file outside the roots: %v, want locator-not-allowed naming the field", err)
		}
		if _, err = run("jobs", "submit", "--profile", "NoSuchProfile"); err == nil || !strings.Contains(cli.Describe(err), "(field job.profile)") {
			t.Errorf("unknown profile: %v", err)
		}
	})

	t.Run("no service crashed", func(t *testing.T) {
		for _, proc := range p.stack.Processes() {
			if exited, err := proc.Exited(); exited {
				t.Errorf("%s exited: %v", proc.Name, err)
			}
		}
	})

	t.Run("SIGTERM stops every service cleanly", func(t *testing.T) {
		procs := p.stack.Processes()
		for i := len(procs) - 1; i >= 0; i-- {
			if err := procs[i].Stop(30 * time.Second); err != nil {
				t.Errorf("%s: %v", procs[i].Name, err)
			}
		}
	})
}

func (p *platform) authed(ctx context.Context, key string) context.Context {
	if key == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

func (p *platform) submitGRPC(t testing.TB, url string) *jobsv1.Job {
	t.Helper()
	return p.submitGRPCAs(t, apiKey, url)
}

// submitGRPCAs submits an ExtractTechnicalMetadata job of url with key and
// waits for its end.
func (p *platform) submitGRPCAs(t testing.TB, key, url string) *jobsv1.Job {
	t.Helper()
	job, err := p.grpc.CreateJob(p.authed(context.Background(), key), &jobsv1.CreateJobRequest{Job: &jobsv1.Job{
		Profile: "ExtractTechnicalMetadata",
		Input:   &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{"inputFile": {Url: url}}},
	}})
	if err != nil {
		t.Fatalf("create job for %s: %v", url, err)
	}
	return p.waitGRPCAs(t, key, job.Id)
}

func (p *platform) waitGRPC(t testing.TB, id string) *jobsv1.Job {
	t.Helper()
	return p.waitGRPCAs(t, apiKey, id)
}

func (p *platform) waitGRPCAs(t testing.TB, key, id string) *jobsv1.Job {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		job, err := p.grpc.GetJob(p.authed(context.Background(), key), &jobsv1.GetJobRequest{Id: id})
		if err != nil {
			t.Fatalf("get job %s: %v", id, err)
		}
		if jobstate.IsTerminal(job.Status) {
			return job
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s still %s after 60s", id, jobstate.Name(job.Status))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *platform) waitREST(t *testing.T, id string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, body := p.rest(t, "GET", "/v1/jobs/"+id, apiKey, "")
		if code != http.StatusOK {
			t.Fatalf("get job %s: %d %s", id, code, body)
		}
		var job map[string]any
		mustJSON(t, body, &job)
		if s, _ := job["status"].(string); s == "JOB_STATUS_COMPLETED" || s == "JOB_STATUS_FAILED" || s == "JOB_STATUS_CANCELED" {
			return job
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s still %v after 60s", id, job["status"])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *platform) rest(t *testing.T, method, path, key, body string) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+p.stack.RESTAddr+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 && !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
		t.Errorf("%s %s: %d with Content-Type %q, want application/problem+json", method, path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return resp.StatusCode, b
}

// checkMetadata asserts the ffprobe output describes the fixture.
func checkMetadata(t *testing.T, data map[string]any) {
	t.Helper()
	dur, _ := dig(data, "format", "duration").(float64)
	if math.Abs(dur-3) > 0.2 {
		t.Errorf("duration = %v, want ~3 s (data %s)", dig(data, "format", "duration"), mustMarshal(data))
	}
	streams, _ := data["streams"].([]any)
	var video, audio bool
	for _, s := range streams {
		m := s.(map[string]any)
		switch m["codecName"] {
		case "h264":
			video = m["width"] == 320.0 && m["height"] == 240.0
		case "aac":
			audio = fmt.Sprint(m["sampleRate"]) == "48000"
		}
	}
	if !video || !audio {
		t.Errorf("streams do not show h264 320x240 and aac 48 kHz: %s", mustMarshal(streams))
	}
}

func checkProblem(t *testing.T, code int, body []byte, want int) map[string]any {
	t.Helper()
	if code != want {
		t.Errorf("status %d, want %d: %s", code, want, body)
	}
	var prob map[string]any
	mustJSON(t, body, &prob)
	for _, k := range []string{"type", "title", "detail", "status"} {
		if _, ok := prob[k]; !ok {
			t.Errorf("problem lacks %q: %s", k, body)
		}
	}
	return prob
}

func dig(m map[string]any, path ...string) any {
	var v any = m
	for _, k := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("not JSON: %v: %s", err, b)
	}
}

func mustMarshal(v any) string {
	var buf bytes.Buffer
	_ = json.NewEncoder(&buf).Encode(v)
	return buf.String()
}

// BenchmarkExtractTechnicalMetadata measures one job at a time through the
// four processes: submit over gRPC -> COMPLETED observed by polling every
// 5 ms, on the 3 s fixture.
func BenchmarkExtractTechnicalMetadata(b *testing.B) {
	p := setup(b)
	ctx := p.authed(context.Background(), apiKey)
	var total time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		job, err := p.grpc.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: &jobsv1.Job{
			Profile: "ExtractTechnicalMetadata",
			Input:   &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{"inputFile": {Url: "file://" + p.clip}}},
		}})
		if err != nil {
			b.Fatal(err)
		}
		for !jobstate.IsTerminal(job.Status) {
			time.Sleep(5 * time.Millisecond)
			if job, err = p.grpc.GetJob(ctx, &jobsv1.GetJobRequest{Id: job.Id}); err != nil {
				b.Fatal(err)
			}
		}
		if job.Status != jobsv1.JobStatus_JOB_STATUS_COMPLETED {
			b.Fatalf("job ended %s: %v", jobstate.Name(job.Status), job.Error)
		}
		total += time.Since(start)
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/job")
}
