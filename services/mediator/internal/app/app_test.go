package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// standInRegistry stands in for the service-registry service over gRPC (the
// lead's end-to-end test runs the real binary): it knows one profile.
type standInRegistry struct {
	registryv1.UnimplementedRegistryServiceServer
}

func (standInRegistry) GetJobProfile(_ context.Context, req *registryv1.GetJobProfileRequest) (*registryv1.JobProfile, error) {
	if req.GetName() != "ExtractTechnicalMetadata" {
		return nil, status.Errorf(codes.NotFound, "profile %q not found", req.GetName())
	}
	return &registryv1.JobProfile{Name: req.GetName(), JobType: "AmeJob",
		InputParameters: []*registryv1.ParameterSpec{{Name: "inputFile"}}}, nil
}

func startStandInRegistry(t *testing.T) string {
	t.Helper()
	srv, _ := grpcx.NewServer()
	registryv1.RegisterRegistryServiceServer(srv, standInRegistry{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

const apiKey = "test-key-123"

func freeAddr(t *testing.T) string {
	t.Helper()
	a, err := devenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestMediator runs the whole mediator against real NATS and etcd and a
// stand-in registry, and exercises its REST and gRPC surfaces.
func TestMediator(t *testing.T) {
	env := testsupport.Start(t)
	cfg := Defaults()
	cfg.NATSURL = env.NATS.URL
	cfg.EtcdEndpoints = env.Etcd.Endpoints
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.AdminAddr = freeAddr(t), freeAddr(t), freeAddr(t)
	cfg.RegistryAddr = startStandInRegistry(t)
	cfg.BootstrapAPIKey, cfg.BootstrapTenant = apiKey, "acme"
	cfg.BootstrapLocatorRoots = []string{"file:///media/"} // the jobs below read file:///media/a.mp4
	cfg.LogLevel = "warn"
	cfg.Version = "1.4.2"

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-done
		}
	})

	testsupport.Eventually(t, 20*time.Second, "readyz 200", func() bool {
		resp, err := http.Get("http://" + cfg.AdminAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	base := "http://" + cfg.HTTPAddr
	do := func(method, path, key string, body io.Reader) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, body)
		if err != nil {
			t.Fatal(err)
		}
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	wantProblem := func(name string, resp *http.Response, body []byte, code int, typ, field string) {
		t.Helper()
		if resp.StatusCode != code || resp.Header.Get("Content-Type") != problem.ContentType {
			t.Fatalf("%s: %d %s %s, want %d problem+json", name, resp.StatusCode, resp.Header.Get("Content-Type"), body, code)
		}
		var p map[string]any
		if err := json.Unmarshal(body, &p); err != nil {
			t.Fatalf("%s: body %s: %v", name, body, err)
		}
		if p["status"] != float64(code) || p["title"] == "" || p["detail"] == "" {
			t.Fatalf("%s: problem %v", name, p)
		}
		if typ != "" && p["type"] != problem.TypePrefix+typ {
			t.Fatalf("%s: type %v, want %s", name, p["type"], typ)
		}
		if field != "" && p["field"] != field {
			t.Fatalf("%s: field %v, want %s", name, p["field"], field)
		}
	}
	validJob := `{"profile":"ExtractTechnicalMetadata","input":{"locators":{"inputFile":{"url":"file:///media/a.mp4"}}}}`

	t.Run("errors are problem json", func(t *testing.T) {
		resp, body := do("GET", "/v1/jobs", "", nil)
		wantProblem("no key", resp, body, 401, "unauthenticated", "")
		resp, body = do("GET", "/v1/jobs", "wrong", nil)
		wantProblem("bad key", resp, body, 401, "unauthenticated", "")
		resp, body = do("POST", "/v1/jobs", apiKey, strings.NewReader(`{"profile":`))
		wantProblem("malformed json", resp, body, 400, "malformed-body", "")
		resp, body = do("POST", "/v1/jobs", apiKey, strings.NewReader(`{"profil":"x"}`))
		wantProblem("unknown field", resp, body, 400, "malformed-body", "")
		resp, body = do("GET", "/v1/jobs/0190b6f1-0000-7000-8000-000000000000", apiKey, nil)
		wantProblem("unknown job", resp, body, 404, "job-not-found", "")
		resp, body = do("GET", "/v1/nothing-here", apiKey, nil)
		wantProblem("unknown route", resp, body, 404, "", "")
		resp, body = do("POST", "/v1/jobs", apiKey, strings.NewReader(`{"profile":"Nope"}`))
		wantProblem("unknown profile", resp, body, 400, "invalid-argument", "job.profile")
		resp, body = do("POST", "/v1/jobs", apiKey, strings.NewReader(`{"profile":"ExtractTechnicalMetadata"}`))
		wantProblem("missing input", resp, body, 400, "invalid-argument", "job.input.inputFile")
		big := `{"profile":"ExtractTechnicalMetadata","tags":{"x":"` + strings.Repeat("a", 2<<20) + `"}}`
		resp, body = do("POST", "/v1/jobs", apiKey, strings.NewReader(big))
		wantProblem("body too large", resp, body, 413, "body-too-large", "")
		resp, body = do("GET", "/v1/jobs?page_size=5000", apiKey, nil)
		wantProblem("page too large", resp, body, 400, "invalid-argument", "page_size")
	})

	var jobID string
	t.Run("create get list over rest", func(t *testing.T) {
		resp, body := do("POST", "/v1/jobs?request_id=abc", apiKey, strings.NewReader(validJob))
		if resp.StatusCode != 200 {
			t.Fatalf("create: %d %s", resp.StatusCode, body)
		}
		var job map[string]any
		if err := json.Unmarshal(body, &job); err != nil {
			t.Fatal(err)
		}
		jobID, _ = job["id"].(string)
		// Default values are emitted, so clients see progress 0 and empty lists.
		if job["status"] != "JOB_STATUS_NEW" || job["tenant"] != "acme" || job["jobType"] != "AmeJob" || job["progress"] != float64(0) || jobID == "" {
			t.Fatalf("created %s", body)
		}
		resp, body = do("POST", "/v1/jobs?request_id=abc", apiKey, strings.NewReader(validJob))
		if resp.StatusCode != 200 || !bytes.Contains(body, []byte(jobID)) {
			t.Fatalf("repeat: %d %s", resp.StatusCode, body)
		}
		resp, body = do("GET", "/v1/jobs/"+jobID, apiKey, nil)
		if resp.StatusCode != 200 || !bytes.Contains(body, []byte(jobID)) {
			t.Fatalf("get: %d %s", resp.StatusCode, body)
		}
		resp, body = do("GET", "/v1/jobs?page_size=10", apiKey, nil)
		var list struct {
			Jobs          []map[string]any `json:"jobs"`
			NextPageToken string           `json:"nextPageToken"`
		}
		if err := json.Unmarshal(body, &list); err != nil || resp.StatusCode != 200 || len(list.Jobs) != 1 || list.Jobs[0]["id"] != jobID {
			t.Fatalf("list: %d %s", resp.StatusCode, body)
		}
		resp, body = do("POST", "/v1/jobs/"+jobID+":cancel", apiKey, strings.NewReader(`{}`))
		if resp.StatusCode != 200 {
			t.Fatalf("cancel: %d %s", resp.StatusCode, body)
		}
	})

	t.Run("batch create over rest", func(t *testing.T) {
		// The second request repeats the first subtest's request id: its
		// result is that job, not a new one.
		batch := `{"requests":[{"job":` + validJob + `},{"job":` + validJob + `,"requestId":"abc"}]}`
		resp, body := do("POST", "/v1/jobs:batchCreate", apiKey, strings.NewReader(batch))
		var got struct {
			Results []struct {
				Job   map[string]any `json:"job"`
				Error map[string]any `json:"error"`
			} `json:"results"`
		}
		if err := json.Unmarshal(body, &got); err != nil || resp.StatusCode != 200 || len(got.Results) != 2 {
			t.Fatalf("batch: %d %s", resp.StatusCode, body)
		}
		first, repeat := got.Results[0].Job, got.Results[1].Job
		if first["id"] == nil || first["id"] == jobID || first["tenant"] != "acme" || first["status"] != "JOB_STATUS_NEW" || repeat["id"] != jobID {
			t.Fatalf("batch results %s, want a new job then %s", body, jobID)
		}
		bad := `{"requests":[{"job":` + validJob + `},{"job":{"profile":"Nope"}}]}`
		resp, body = do("POST", "/v1/jobs:batchCreate", apiKey, strings.NewReader(bad))
		wantProblem("batch with an unknown profile", resp, body, 400, "invalid-argument", "requests[1].job.profile")
	})

	t.Run("openapi", func(t *testing.T) {
		resp, body := do("GET", "/v1/openapi.json", "", nil)
		if resp.StatusCode != 200 || !json.Valid(body) || !bytes.Contains(body, []byte("/v1/jobs")) {
			t.Fatalf("openapi: %d", resp.StatusCode)
		}
		// Clients and API portals show the document's title and version.
		var doc struct {
			Info struct{ Title, Version string }
		}
		if err := json.Unmarshal(body, &doc); err != nil || doc.Info.Title != "Medius API" || doc.Info.Version != "1.4.2" {
			t.Fatalf("openapi info = %+v (%v), want Medius API 1.4.2", doc.Info, err)
		}
	})

	t.Run("grpc", func(t *testing.T) {
		conn, err := grpcx.Dial(cfg.GRPCAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		client := jobsv1.NewJobServiceClient(conn)
		_, err = client.GetJob(context.Background(), &jobsv1.GetJobRequest{Id: jobID})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("no credentials: %v", err)
		}
		actx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+apiKey)
		job, err := client.GetJob(actx, &jobsv1.GetJobRequest{Id: jobID})
		if err != nil || job.GetId() != jobID {
			t.Fatalf("GetJob = %v, %v", job, err)
		}
		hc, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health = %v, %v", hc, err)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		resp, err := http.Get("http://" + cfg.AdminAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !bytes.Contains(b, []byte("medius_mediator_jobs_admitted")) {
			t.Fatalf("no admitted counter in metrics")
		}
	})

	// Graceful shutdown: Run returns nil promptly.
	cancel()
	stopped = true
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, err := http.Get(fmt.Sprintf("http://%s/v1/jobs", cfg.HTTPAddr)); err == nil {
		t.Fatal("http still serving after shutdown")
	}
}
