package mcma

import (
	"bytes"
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
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"github.com/medius-platform/medius/services/mediator/internal/registryapi"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	adminKey  = "admin-key-for-tests"
	tenantKey = "tenant-key-for-tests"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// registryBinary builds the real service-registry once per test binary.
func registryBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mcma-test-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "service-registry")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/medius-platform/medius/services/service-registry").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("build service-registry: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// setup runs the real registry on real etcd and NATS, the mediator's
// registry proxy behind its auth interceptors, and the MCMA routes over it:
// everything the mediator wires, on test ports. registry is the registry's
// own client, as workers reach it.
func setup(t *testing.T) (baseURL string, proxy, registry registryv1.RegistryServiceClient) {
	t.Helper()
	env := devenv.Start(t)
	regAddr, err := devenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	adminAddr, err := devenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(registryBinary(t), "--grpc-addr", regAddr, "--admin-addr", adminAddr, "--nats-url", env.NATS.URL,
		"--etcd-endpoints", strings.Join(env.Etcd.Endpoints, ","), "--log-format", "text", "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	regConn, err := grpcx.Dial(regAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { regConn.Close() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := healthpb.NewHealthClient(regConn).Check(t.Context(), &healthpb.HealthCheckRequest{})
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry not serving: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	cli, err := clientv3.New(clientv3.Config{Endpoints: env.Etcd.Endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	keys := auth.NewEtcdKeys(cli)
	if err := keys.Put(t.Context(), auth.HashKey(tenantKey), auth.Record{Tenant: "t1"}); err != nil {
		t.Fatal(err)
	}
	authn := auth.NewAuthenticator(keys, auth.WithAdminKey(adminKey))
	srv, _ := grpcx.NewServer(grpc.ChainUnaryInterceptor(authn.UnaryServerInterceptor()), grpc.ChainStreamInterceptor(authn.StreamServerInterceptor()))
	registryv1.RegisterRegistryServiceServer(srv, registryapi.New(registryv1.NewRegistryServiceClient(regConn)))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	self, err := grpcx.Dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { self.Close() })

	mux := http.NewServeMux()
	(&API{Registry: registryv1.NewRegistryServiceClient(self)}).Mount(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return hs.URL, registryv1.NewRegistryServiceClient(self), registryv1.NewRegistryServiceClient(regConn)
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func do(t *testing.T, method, url, key string, body []byte) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set(APIKeyHeader, key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func fixture(t *testing.T, name, base string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.ReplaceAll(b, []byte("{base}"), []byte(base))
}

// sameDocument compares a response document with an expected fixture:
// every fixture field must be there with that value, and dateCreated and
// dateModified must be present (their values are the server's clock).
func sameDocument(t *testing.T, what string, got []byte, want []byte) map[string]any {
	t.Helper()
	var g, w map[string]any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: not JSON: %v: %s", what, err, got)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"dateCreated", "dateModified"} {
		if s, _ := g[f].(string); s == "" {
			t.Errorf("%s: %s missing: %s", what, f, got)
		} else if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
			t.Errorf("%s: %s %q is not an ISO 8601 time", what, f, s)
		}
		delete(g, f)
	}
	if !reflect.DeepEqual(g, w) {
		gb, _ := json.MarshalIndent(g, "", "  ")
		t.Errorf("%s:\n got  %s\n want %s", what, gb, want)
	}
	return g
}

func TestMCMAResources(t *testing.T) {
	t.Parallel()
	root, _, _ := setup(t)
	base := root + Prefix

	// Create a profile and a service from MCMA documents (admin).
	r := do(t, "POST", base+"/job-profiles", adminKey, fixture(t, "job-profile.json", base))
	if r.status != http.StatusCreated {
		t.Fatalf("POST job-profile: %d %s", r.status, r.body)
	}
	if loc := r.header.Get("Location"); loc != base+"/job-profiles/ExtractThumbnail" {
		t.Errorf("Location = %q", loc)
	}
	sameDocument(t, "created profile", r.body, fixture(t, "job-profile.expected.json", base))
	r = do(t, "POST", base+"/services", adminKey, fixture(t, "service.json", base))
	if r.status != http.StatusCreated {
		t.Fatalf("POST service: %d %s", r.status, r.body)
	}
	sameDocument(t, "created service", r.body, fixture(t, "service.expected.json", base))
	if r := do(t, "POST", base+"/services", adminKey, fixture(t, "service.json", base)); r.status != http.StatusConflict {
		t.Errorf("second POST of a service: %d, want 409", r.status)
	}

	// Read with a tenant's key, in the x-mcma-api-key header.
	r = do(t, "GET", base+"/job-profiles/ExtractThumbnail", tenantKey, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET profile: %d %s", r.status, r.body)
	}
	sameDocument(t, "fetched profile", r.body, fixture(t, "job-profile.expected.json", base))
	r = do(t, "GET", base+"/services/"+RegistryID, tenantKey, nil)
	sameDocument(t, "registry service", append([]byte(nil), bytes.Replace(r.body, []byte(`}`+"\n"), []byte(`,"dateCreated":"2020-01-01T00:00:00Z","dateModified":"2020-01-01T00:00:00Z"}`), 1)...),
		fixture(t, "registry-service.expected.json", base))

	// PUT is an upsert: it creates, then replaces.
	for i, jt := range []string{"AmeJob", "QAJob"} {
		body := fmt.Sprintf(`{"@type":"JobProfile","name":"Probe","jobType":%q,"inputParameters":[{"@type":"JobParameter","parameterName":"inputFile","parameterType":"Locator"}]}`, jt)
		r = do(t, "PUT", base+"/job-profiles/Probe", adminKey, []byte(body))
		if r.status != http.StatusOK {
			t.Fatalf("PUT %d: %d %s", i, r.status, r.body)
		}
	}
	r = do(t, "GET", base+"/job-profiles?jobType=QAJob", tenantKey, nil)
	var page struct {
		Results            []map[string]any `json:"results"`
		NextPageStartToken *string          `json:"nextPageStartToken"`
	}
	if err := json.Unmarshal(r.body, &page); err != nil || len(page.Results) != 1 || page.Results[0]["name"] != "Probe" || page.NextPageStartToken != nil {
		t.Errorf("?jobType=QAJob = %s (%v)", r.body, err)
	}
	if !bytes.Contains(r.body, []byte(`"nextPageStartToken":null`)) {
		t.Errorf("last page must carry nextPageStartToken null: %s", r.body)
	}

	// More services, then every page of one: each exactly once, registry first.
	for _, s := range []string{`{"name":"Ame1","jobType":"AmeJob"}`, `{"name":"Ame2","jobType":"AmeJob"}`, `{"name":"Qa1","jobType":"QAJob"}`} {
		var d Service
		_ = json.Unmarshal([]byte(s), &d)
		if r := do(t, "PUT", base+"/services/"+d.Name, adminKey, []byte(s)); r.status != http.StatusOK {
			t.Fatalf("PUT service %s: %d %s", d.Name, r.status, r.body)
		}
	}
	names := func(query string) []string {
		t.Helper()
		var out []string
		token := ""
		for range 20 {
			url := base + "/services?" + query
			if token != "" {
				url += "&pageStartToken=" + token
			}
			r := do(t, "GET", url, tenantKey, nil)
			if r.status != http.StatusOK {
				t.Fatalf("GET %s: %d %s", url, r.status, r.body)
			}
			var p struct {
				Results            []Service `json:"results"`
				NextPageStartToken *string   `json:"nextPageStartToken"`
			}
			if err := json.Unmarshal(r.body, &p); err != nil {
				t.Fatal(err)
			}
			for _, s := range p.Results {
				out = append(out, s.Name)
			}
			if p.NextPageStartToken == nil {
				return out
			}
			token = *p.NextPageStartToken
		}
		t.Fatal("pages do not end")
		return nil
	}
	all := []string{"Service Registry", "Ame1", "Ame2", "FFmpegService", "Qa1"}
	for _, q := range []string{"pageSize=1", "pageSize=2", "pageSize=100"} {
		if got := names(q); !reflect.DeepEqual(got, all) {
			t.Errorf("%s: %v, want %v", q, got, all)
		}
	}
	for q, want := range map[string][]string{
		"jobType=AmeJob&pageSize=1": {"Ame1", "Ame2"},
		"authType=McmaApiKey":       {"FFmpegService"},
		"name=Qa1":                  {"Qa1"},
		"jobProfileIds=" + base + "/job-profiles/ExtractThumbnail": {"FFmpegService"},
		"name=Nothing": nil,
	} {
		if got := names(q); !reflect.DeepEqual(got, want) {
			t.Errorf("?%s: %v, want %v", q, got, want)
		}
	}

	// Delete, then it is gone.
	if r := do(t, "DELETE", base+"/services/Qa1", adminKey, nil); r.status != http.StatusOK {
		t.Errorf("DELETE: %d %s", r.status, r.body)
	}
	if r := do(t, "GET", base+"/services/Qa1", tenantKey, nil); r.status != http.StatusNotFound {
		t.Errorf("GET deleted: %d", r.status)
	}
}

func TestMCMAAuthAndErrors(t *testing.T) {
	t.Parallel()
	root, proxy, _ := setup(t)
	base := root + Prefix
	profile := []byte(`{"@type":"JobProfile","name":"P","jobType":"AIJob"}`)
	for _, tc := range []struct {
		name, method, path, key string
		body                    []byte
		status                  int
		problemField            string
	}{
		{"no credential", "GET", "/services", "", nil, http.StatusUnauthorized, ""},
		{"bad credential", "GET", "/job-profiles", "wrong", nil, http.StatusUnauthorized, ""},
		{"tenant may not write", "POST", "/job-profiles", tenantKey, profile, http.StatusForbidden, ""},
		{"tenant may not delete", "DELETE", "/services/x", tenantKey, nil, http.StatusForbidden, ""},
		{"malformed body", "POST", "/job-profiles", adminKey, []byte(`{"name":`), http.StatusBadRequest, ""},
		{"unknown parameter type", "PUT", "/job-profiles/P", adminKey,
			[]byte(`{"jobType":"AIJob","inputParameters":[{"parameterName":"x","parameterType":"text"}]}`), http.StatusBadRequest, "profile.input_parameters[0].type"},
		{"duplicate parameter", "PUT", "/job-profiles/P", adminKey,
			[]byte(`{"jobType":"AIJob","inputParameters":[{"parameterName":"x","parameterType":"string"}],"outputParameters":[{"parameterName":"x","parameterType":"string"}]}`), http.StatusBadRequest, "profile.output_parameters[0].name"},
		{"name differs from id", "PUT", "/job-profiles/P", adminKey, []byte(`{"name":"Q","jobType":"AIJob"}`), http.StatusBadRequest, "name"},
		{"bad page size", "GET", "/services?pageSize=x", tenantKey, nil, http.StatusBadRequest, "pageSize"},
		{"registry entry is read-only", "DELETE", "/services/" + RegistryID, adminKey, nil, http.StatusConflict, ""},
		{"unknown profile", "GET", "/job-profiles/Nope", tenantKey, nil, http.StatusNotFound, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, tc.method, base+tc.path, tc.key, tc.body)
			if r.status != tc.status {
				t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.path, r.status, r.body, tc.status)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("Content-Type = %q, want problem JSON", ct)
			}
			var p map[string]any
			if err := json.Unmarshal(r.body, &p); err != nil || p["type"] == nil || p["title"] == nil {
				t.Errorf("not a problem document: %s", r.body)
			}
			if tc.problemField != "" && p["field"] != tc.problemField {
				t.Errorf("field = %v, want %s", p["field"], tc.problemField)
			}
		})
	}
	// The registry as gRPC on the mediator: tenants read and watch, but never
	// register instances there (workers talk to the registry directly).
	tenant := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+tenantKey)
	_, err := proxy.RegisterInstance(tenant, &registryv1.RegisterInstanceRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("RegisterInstance through the mediator: %v, want PermissionDenied", err)
	}
	stream, err := proxy.Watch(tenant, &registryv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if first, err := stream.Recv(); err != nil || !first.GetResync() || !first.GetSynced() {
		t.Errorf("Watch through the mediator: %v, %v; want a complete snapshot", first, err)
	}
	if _, err := proxy.ListServices(t.Context(), &registryv1.ListServicesRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("ListServices without a credential: %v, want Unauthenticated", err)
	}

	// Authorization: Bearer works as well as x-mcma-api-key.
	req, _ := http.NewRequestWithContext(context.Background(), "GET", base+"/services", nil)
	req.Header.Set("Authorization", "Bearer "+tenantKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("Bearer: %d", resp.StatusCode)
	}
}
