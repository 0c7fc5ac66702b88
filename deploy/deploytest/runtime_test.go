package deploytest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/devstack"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

const runtimeAPIKey = "mk_deploytest_key"

// collector is an OTLP gRPC trace receiver: what an OpenTelemetry Collector
// is to the services, kept in memory for the test to read.
type collector struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []span
}

type span struct {
	service, name, traceID, jobID string
	kind                          tracepb.Span_SpanKind
}

func (c *collector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				service = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				sp := span{service: service, name: s.GetName(), traceID: fmt.Sprintf("%x", s.GetTraceId()), kind: s.GetKind()}
				for _, a := range s.GetAttributes() {
					if a.GetKey() == "medius.job_id" {
						sp.jobID = a.GetValue().GetStringValue()
					}
				}
				c.spans = append(c.spans, sp)
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (c *collector) snapshot() []span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]span(nil), c.spans...)
}

// TestJobTraceAndMetrics runs the four real binaries exporting traces to an
// OTLP endpoint served here, runs one job, and checks that one trace holds
// the spans of every service the job passes through (mediator, processor,
// worker), and that the documented metrics are on every admin port and move
// with the job.
func TestJobTraceAndMetrics(t *testing.T) {
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		t.Fatal("ffmpeg not found: install Debian package ffmpeg (make test does this when run as root)")
	}
	bin := devstack.BuildBinaries(t)

	col := &collector{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, col)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() { srv.Stop(); <-served })

	dir := t.TempDir()
	media := filepath.Join(dir, "media")
	if err := os.MkdirAll(media, 0o755); err != nil {
		t.Fatal(err)
	}
	clip := filepath.Join(media, "clip.mp4")
	if out, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error",
		"-f", "lavfi", "-i", "testsrc=duration=1:size=160x120:rate=25",
		"-c:v", "libx264", "-pix_fmt", "yuv420p", clip).CombinedOutput(); err != nil {
		t.Fatalf("make fixture: %v\n%s", err, out)
	}
	stack := devstack.StartForTest(t, devstack.Config{
		BinDir: bin, Dir: filepath.Join(dir, "stack"), APIKey: runtimeAPIKey, FileRoots: []string{media},
		// The batch span processor exports every 5s by default; a short
		// delay keeps the test quick without changing what is exported.
		Env: []string{"MEDIUS_OTLP_ENDPOINT=" + ln.Addr().String(), "OTEL_BSP_SCHEDULE_DELAY=200"},
	})

	admin := map[string]string{}
	for _, p := range stack.Processes() {
		name := regexp.MustCompile(`-\d+$`).ReplaceAllString(p.Name, "")
		if _, ok := admin[name]; !ok {
			admin[name] = p.AdminAddr
		}
		// The paths the Kubernetes probes and the image healthcheck use.
		for _, path := range []string{"/healthz", "/readyz"} {
			if code, body := get(t, "http://"+p.AdminAddr+path); code != http.StatusOK {
				t.Errorf("%s %s: %d %s", p.Name, path, code, body)
			}
		}
	}
	before := map[string]map[string]float64{}
	for name, addr := range admin {
		before[name] = scrape(t, addr)
	}

	// One job, through the REST API as a user submits it.
	api := &restClient{t: t, base: "http://" + stack.RESTAddr}
	start := time.Now()
	job := struct{ ID string }{api.submit(fmt.Sprintf(`{"profile":"ExtractTechnicalMetadata","input":{"locators":{"inputFile":{"url":"file://%s"}}}}`, clip))}
	api.wait(job.ID, "JOB_STATUS_COMPLETED")
	t.Logf("job %s completed in %s", job.ID, time.Since(start).Round(time.Millisecond))

	// The registry is not on a job's path: the mediator and the processor
	// read profiles and services from their watched copies of it.
	t.Run("one trace across the services a job passes through", func(t *testing.T) {
		want := []string{"mediator", "job-processor", "job-worker"}
		steps := []string{"POST /v1/jobs", "select", "dispatch", "execute", "tool ffprobe"}
		var trace string
		var got map[string][]string
		poll(t, 30*time.Second, "one trace with spans of every service", func() (bool, string) {
			spans := col.snapshot()
			// The job's trace is the one its processor and worker spans
			// (which carry medius.job_id) belong to.
			traces := map[string]bool{}
			for _, s := range spans {
				if s.jobID == job.ID {
					traces[s.traceID] = true
				}
			}
			if len(traces) != 1 {
				return false, fmt.Sprintf("spans naming the job are in %d traces (%d spans in all)", len(traces), len(spans))
			}
			for tr := range traces {
				trace = tr
			}
			got = map[string][]string{}
			for _, s := range spans {
				if s.traceID == trace {
					got[s.service] = append(got[s.service], s.name)
				}
			}
			for _, w := range want {
				if len(got[w]) == 0 {
					return false, fmt.Sprintf("trace %s has spans of %v only", trace, keys(got))
				}
			}
			// Spans are exported as they end, in batches: the worker's
			// execute span ends after its tool's, once the result is
			// reported, and may come a batch later.
			names := strings.Join(append(append(got["job-processor"], got["job-worker"]...), got["mediator"]...), "|")
			for _, step := range steps {
				if !strings.Contains(names, step) {
					return false, fmt.Sprintf("trace %s has no %q span yet", trace, step)
				}
			}
			return true, ""
		})
		for _, w := range want {
			sort.Strings(got[w])
			t.Logf("trace %s: %s: %s", trace, w, strings.Join(got[w], ", "))
		}

	})

	t.Run("metrics move with the job", func(t *testing.T) {
		after := map[string]map[string]float64{}
		// Counters are read on scrape; the terminal status reaches the
		// processor's counters before the mediator answers COMPLETED, but
		// poll anyway rather than assume an order.
		profile := `profile="ExtractTechnicalMetadata"`
		tenant := `tenant="default"`
		checks := []struct {
			service, metric string
			labels          []string
			delta           float64 // at least
		}{
			{"mediator", "medius_mediator_jobs_admitted_total", []string{profile, tenant}, 1},
			{"job-processor", "medius_processor_jobs_completed_total", []string{profile, tenant}, 1},
			{"job-processor", "medius_processor_jobs_dispatched_total", []string{profile}, 1},
			{"job-processor", "medius_execution_duration_seconds_count", []string{profile, `status="COMPLETED"`}, 1},
		}
		poll(t, 20*time.Second, "counters to move", func() (bool, string) {
			for name, addr := range admin {
				after[name] = scrape(t, addr)
			}
			for _, c := range checks {
				d := sum(after[c.service], c.metric, c.labels) - sum(before[c.service], c.metric, c.labels)
				if d < c.delta {
					return false, fmt.Sprintf("%s %s%v moved by %v", c.service, c.metric, c.labels, d)
				}
			}
			return true, ""
		})
		if !hasMetric(t, admin["job-worker"], "medius_worker_capacity") {
			t.Error("job-worker: no medius_worker_capacity on /metrics")
		}

		// A job that fails and one that is canceled while it runs move their
		// counters; while it runs, the worker's in-flight gauge and its
		// service's queue depth show it.
		sleep := []string{`profile="Sleep"`, tenant}
		base := scrape(t, admin["job-processor"])
		failed := api.submit(`{"profile":"Sleep","input":{"parameters":{"seconds":-1}}}`)
		api.wait(failed, "JOB_STATUS_FAILED")
		running := api.submit(`{"profile":"Sleep","input":{"parameters":{"seconds":120}}}`)
		api.wait(running, "JOB_STATUS_RUNNING")
		poll(t, 10*time.Second, "the running job on the gauges", func() (bool, string) {
			w, p := scrape(t, admin["job-worker"]), scrape(t, admin["job-processor"])
			inflight := sum(w, "medius_worker_jobs_in_flight", []string{`service="medius-worker"`})
			depth := sum(p, "medius_queue_depth", []string{`service="medius-worker"`})
			return inflight == 1 && depth == 1, fmt.Sprintf("in flight %v, queue depth %v", inflight, depth)
		})
		api.cancel(running)
		api.wait(running, "JOB_STATUS_CANCELED")
		poll(t, 20*time.Second, "failed and canceled counters to move, gauges to settle", func() (bool, string) {
			w, p := scrape(t, admin["job-worker"]), scrape(t, admin["job-processor"])
			df := sum(p, "medius_processor_jobs_failed_total", sleep) - sum(base, "medius_processor_jobs_failed_total", sleep)
			dc := sum(p, "medius_processor_jobs_canceled_total", sleep) - sum(base, "medius_processor_jobs_canceled_total", sleep)
			inflight := sum(w, "medius_worker_jobs_in_flight", []string{`service="medius-worker"`})
			depth := sum(p, "medius_queue_depth", []string{`service="medius-worker"`})
			return df == 1 && dc == 1 && inflight == 0 && depth == 0,
				fmt.Sprintf("failed +%v, canceled +%v, in flight %v, queue depth %v", df, dc, inflight, depth)
		})
		// A job with a webhook: the mediator's delivery counter moves once
		// the endpoint has answered.
		var received atomic.Int32
		hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			received.Add(1)
		}))
		defer hook.Close()
		api.wait(api.submit(`{"profile":"Sleep","input":{"parameters":{"seconds":0}},"notificationEndpoint":"`+hook.URL+`/hook"}`), "JOB_STATUS_COMPLETED")
		poll(t, 20*time.Second, "webhook deliveries to be counted", func() (bool, string) {
			d := sum(scrape(t, admin["mediator"]), "medius_webhook_deliveries_total", []string{tenant})
			return received.Load() >= 1 && d >= 1, fmt.Sprintf("endpoint received %d, medius_webhook_deliveries_total %v", received.Load(), d)
		})

		if c := sum(after["job-worker"], "medius_worker_capacity", []string{`service="medius-worker"`}); c < 1 {
			t.Errorf("worker capacity %v, want the configured capacity", c)
		}
	})
}

var sample = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)`)

// scrape reads a Prometheus text exposition into "name{labels}" -> value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	code, body := get(t, "http://"+addr+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("%s/metrics: %d", addr, code)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		m := sample.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			continue
		}
		out[m[1]+m[2]] = v
	}
	return out
}

// hasMetric reports whether the exposition declares the metric family (a
// counter with no sample yet still has its # TYPE line only when observed,
// so families are looked up by HELP/TYPE or sample).
func hasMetric(t *testing.T, addr, name string) bool {
	_, body := get(t, "http://"+addr+"/metrics")
	return strings.Contains(body, "# TYPE "+name+" ") || regexp.MustCompile(`(?m)^`+name+`[{ ]`).MatchString(body)
}

// sum adds the samples of metric whose labels include all of labels.
func sum(samples map[string]float64, metric string, labels []string) float64 {
	var total float64
	for k, v := range samples {
		name, lbls, _ := strings.Cut(k, "{")
		if name != metric {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(lbls, l) {
				ok = false
			}
		}
		if ok {
			total += v
		}
	}
	return total
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// poll retries f every 100ms until it reports done or timeout passes.
func poll(t *testing.T, timeout time.Duration, what string, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done, last := f()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %s", what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func keys(m map[string][]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// restClient is a user of the REST API with the bootstrap key.
type restClient struct {
	t    *testing.T
	base string
}

func (c *restClient) do(method, path, body string) (int, []byte) {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.base+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+runtimeAPIKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (c *restClient) submit(body string) string {
	c.t.Helper()
	code, b := c.do(http.MethodPost, "/v1/jobs", body)
	var job struct{ ID string }
	if code != http.StatusOK || json.Unmarshal(b, &job) != nil || job.ID == "" {
		c.t.Fatalf("create job: %d %s", code, b)
	}
	return job.ID
}

func (c *restClient) cancel(id string) {
	c.t.Helper()
	if code, b := c.do(http.MethodPost, "/v1/jobs/"+id+":cancel", "{}"); code != http.StatusOK {
		c.t.Fatalf("cancel %s: %d %s", id, code, b)
	}
}

// wait polls the job until it has status; another terminal status fails.
func (c *restClient) wait(id, status string) {
	c.t.Helper()
	poll(c.t, 60*time.Second, "job "+id+" to reach "+status, func() (bool, string) {
		_, b := c.do(http.MethodGet, "/v1/jobs/"+id, "")
		var j struct{ Status string }
		_ = json.Unmarshal(b, &j)
		if j.Status != status && (strings.HasSuffix(j.Status, "COMPLETED") || strings.HasSuffix(j.Status, "FAILED") || strings.HasSuffix(j.Status, "CANCELED")) {
			c.t.Fatalf("job %s ended %s, want %s: %s", id, j.Status, status, b)
		}
		return j.Status == status, string(b)
	})
}
