package app

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// mediator is a running mediator for a test, with a REST helper.
type mediator struct {
	t   *testing.T
	cfg Config
	env *testsupport.Env
}

func startMediator(t *testing.T, mutate func(*Config)) *mediator {
	t.Helper()
	env := testsupport.Start(t)
	cfg := Defaults()
	cfg.NATSURL = env.NATS.URL
	cfg.EtcdEndpoints = env.Etcd.Endpoints
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.AdminAddr = freeAddr(t), freeAddr(t), freeAddr(t)
	cfg.RegistryAddr = startStandInRegistry(t)
	cfg.BootstrapAPIKey = apiKey
	cfg.BootstrapLocatorRoots = []string{"file:///media/"} // jobBody reads file:///media/a.mp4
	cfg.LogLevel = "warn"
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	testsupport.Eventually(t, 60*time.Second, "readyz 200", func() bool {
		resp, err := http.Get("http://" + cfg.AdminAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return &mediator{t: t, cfg: cfg, env: env}
}

// do sends a JSON request with key as bearer credential and decodes a JSON
// answer into out (when not nil); it returns the status and body.
func (m *mediator) do(method, path, key, body string, out any) (int, []byte) {
	m.t.Helper()
	resp, b := testsupport.HTTP(m.t, method, "http://"+m.cfg.HTTPAddr+path, testsupport.Bearer(key), body, out)
	return resp.StatusCode, b
}

func (m *mediator) wantProblem(what string, code int, body []byte, typ string) {
	m.t.Helper()
	var p map[string]any
	if err := json.Unmarshal(body, &p); err != nil || p["status"] != float64(code) {
		m.t.Fatalf("%s: %s, want problem %d", what, body, code)
	}
	if typ != "" && p["type"] != problem.TypePrefix+typ {
		m.t.Fatalf("%s: type %v, want %s", what, p["type"], typ)
	}
}

const adminKey = "admin-key-for-tests-0123456789"

const jobBody = `{"profile":"ExtractTechnicalMetadata","input":{"locators":{"inputFile":{"url":"file:///media/a.mp4"}}}}`

func TestTenantsKeysAndTokens(t *testing.T) {
	m := startMediator(t, func(c *Config) {
		c.AdminAPIKey = adminKey
		c.BootstrapClientID, c.BootstrapClientSecret = "default-client", "default-secret-0123456789"
	})

	// The OpenAPI document describes these routes too.
	if code, b := m.do("GET", "/v1/openapi.json", "", "", nil); code != 200 || !strings.Contains(string(b), `"/v1/tenants/{tenant}/keys"`) ||
		!strings.Contains(string(b), `"/v1/jobs/{id}:watch"`) || !strings.Contains(string(b), `"/v1/jobs/{id}/executions"`) {
		t.Fatalf("openapi: %d", code)
	}

	// The bootstrap tenant exists; its client id and secret get a token.
	var tenants struct{ Tenants []map[string]any }
	if code, b := m.do("GET", "/v1/tenants", adminKey, "", &tenants); code != 200 || len(tenants.Tenants) != 1 || tenants.Tenants[0]["id"] != "default" {
		t.Fatalf("tenants: %d %s", code, b)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	if code, b := m.do("POST", "/v1/auth/token", "", `{"clientId":"default-client","clientSecret":"default-secret-0123456789"}`, &tok); code != 200 ||
		tok.TokenType != "Bearer" || tok.ExpiresIn < 3590 || tok.ExpiresIn > 3600 {
		t.Fatalf("token: %d %s", code, b)
	}
	code, b := m.do("POST", "/v1/auth/token", "", `{"clientId":"default-client","clientSecret":"wrong-secret-0123456789"}`, nil)
	if code != 401 {
		t.Fatalf("bad secret: %d %s", code, b)
	}
	m.wantProblem("bad secret", 401, b, "unauthenticated")

	// The token and the bootstrap API key act for the same tenant.
	var job map[string]any
	if code, b := m.do("POST", "/v1/jobs", tok.AccessToken, jobBody, &job); code != 200 || job["tenant"] != "default" {
		t.Fatalf("create with token: %d %s", code, b)
	}
	defaultJob := job["id"].(string)
	if code, b := m.do("GET", "/v1/jobs/"+defaultJob, apiKey, "", nil); code != 200 {
		t.Fatalf("get with bootstrap key: %d %s", code, b)
	}

	// Only the admin manages tenants; the admin owns no jobs.
	code, b = m.do("POST", "/v1/tenants", apiKey, `{"id":"acme"}`, nil)
	m.wantProblem("tenant creates tenant", 403, b, "admin-only")
	code, b = m.do("GET", "/v1/jobs", adminKey, "", nil)
	m.wantProblem("admin lists jobs", 403, b, "admin-not-tenant")
	var acme map[string]any
	if code, b := m.do("POST", "/v1/tenants", adminKey, `{"id":"acme","displayName":"Acme","locatorRoots":["file:///media/"]}`, &acme); code != 201 || acme["webhookSecret"] == "" {
		t.Fatalf("create tenant: %d %s", code, b)
	}
	code, b = m.do("POST", "/v1/tenants", adminKey, `{"id":"acme"}`, nil)
	m.wantProblem("duplicate tenant", 409, b, "tenant-exists")
	code, b = m.do("POST", "/v1/tenants", adminKey, `{"id":"Not Valid"}`, nil)
	m.wantProblem("bad tenant id", 400, b, "invalid-argument")

	// A key is shown once: the list never carries secrets.
	var key struct {
		ClientID, ClientSecret, Tenant string
	}
	if code, b := m.do("POST", "/v1/tenants/acme/keys", adminKey, `{"name":"ci"}`, &key); code != 201 || key.ClientSecret == "" || key.Tenant != "acme" {
		t.Fatalf("create key: %d %s", code, b)
	}
	code, b = m.do("GET", "/v1/tenants/acme/keys", adminKey, "", nil)
	if code != 200 || !strings.Contains(string(b), key.ClientID) || strings.Contains(string(b), key.ClientSecret) {
		t.Fatalf("list keys: %d %s", code, b)
	}
	resp, err := m.env.EtcdCli.Get(context.Background(), "/medius/", clientv3WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if strings.Contains(string(kv.Value), key.ClientSecret) || strings.Contains(string(kv.Key), key.ClientSecret) {
			t.Fatalf("secret stored in clear under %s", kv.Key)
		}
	}

	// The secret works directly as a bearer key, for acme only: the
	// default tenant's job is not found.
	if code, b := m.do("POST", "/v1/jobs", key.ClientSecret, jobBody, &job); code != 200 || job["tenant"] != "acme" {
		t.Fatalf("create as acme: %d %s", code, b)
	}
	acmeJob := job["id"].(string)
	code, b = m.do("GET", "/v1/jobs/"+defaultJob, key.ClientSecret, "", nil)
	m.wantProblem("other tenant's job", 404, b, "job-not-found")
	code, b = m.do("POST", "/v1/jobs/"+defaultJob+":cancel", key.ClientSecret, "{}", nil)
	m.wantProblem("cancel other tenant's job", 404, b, "job-not-found")
	var list struct{ Jobs []map[string]any }
	if code, b := m.do("GET", "/v1/jobs", key.ClientSecret, "", &list); code != 200 || len(list.Jobs) != 1 || list.Jobs[0]["id"] != acmeJob {
		t.Fatalf("acme's list: %d %s", code, b)
	}
	// A tenant manages its own keys, never another's.
	code, b = m.do("GET", "/v1/tenants/default/keys", key.ClientSecret, "", nil)
	m.wantProblem("other tenant's keys", 404, b, "tenant-not-found")
	// An unknown key is named in the answer.
	code, b = m.do("DELETE", "/v1/tenants/acme/keys/mc_doesnotexist", adminKey, "", nil)
	m.wantProblem("revoke an unknown key", 404, b, "api-key-not-found")
	if !strings.Contains(string(b), "mc_doesnotexist") {
		t.Fatalf("revoke an unknown key: %s does not name it", b)
	}

	// The same over gRPC metadata, with a token.
	var acmeTok struct {
		AccessToken string `json:"access_token"`
	}
	if code, b := m.do("POST", "/v1/auth/token", "", `{"clientId":"`+key.ClientID+`","clientSecret":"`+key.ClientSecret+`"}`, &acmeTok); code != 200 {
		t.Fatalf("acme token: %d %s", code, b)
	}
	conn, err := grpcx.Dial(m.cfg.GRPCAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cl := jobsv1.NewJobServiceClient(conn)
	gctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+acmeTok.AccessToken)
	if _, err := cl.GetJob(gctx, &jobsv1.GetJobRequest{Id: acmeJob}); err != nil {
		t.Fatalf("grpc get with token: %v", err)
	}
	if _, err := cl.GetJob(gctx, &jobsv1.GetJobRequest{Id: defaultJob}); status.Code(err) != codes.NotFound {
		t.Fatalf("grpc other tenant's job: %v", err)
	}
	tampered := acmeTok.AccessToken[:len(acmeTok.AccessToken)-2] + "xx"
	code, b = m.do("GET", "/v1/jobs", tampered, "", nil)
	m.wantProblem("tampered token", 401, b, "unauthenticated")

	// Revoking the key ends the key and its tokens (within the auth cache
	// TTL of 10s).
	if code, b := m.do("DELETE", "/v1/tenants/acme/keys/"+key.ClientID, adminKey, "", nil); code != 204 {
		t.Fatalf("revoke: %d %s", code, b)
	}
	testsupport.Eventually(t, 15*time.Second, "revoked key and token refused", func() bool {
		c1, _ := m.do("GET", "/v1/jobs", key.ClientSecret, "", nil)
		c2, _ := m.do("GET", "/v1/jobs", acmeTok.AccessToken, "", nil)
		return c1 == 401 && c2 == 401
	})
	code, b = m.do("POST", "/v1/auth/token", "", `{"clientId":"`+key.ClientID+`","clientSecret":"`+key.ClientSecret+`"}`, nil)
	m.wantProblem("revoked key's exchange", 401, b, "unauthenticated")
}

func TestQuotaOverREST(t *testing.T) {
	m := startMediator(t, func(c *Config) { c.AdminAPIKey = adminKey })
	if code, b := m.do("PUT", "/v1/tenants/default/quota", adminKey, `{"maxConcurrentJobs":3}`, nil); code != 200 {
		t.Fatalf("set quota: %d %s", code, b)
	}
	var mu sync.Mutex
	answers := map[int]int{}
	var refusal []byte
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			code, b := m.do("POST", "/v1/jobs", apiKey, jobBody, nil)
			mu.Lock()
			defer mu.Unlock()
			answers[code]++
			if code == 429 {
				refusal = b
			}
		})
	}
	wg.Wait()
	if answers[200] != 3 || answers[429] != 9 {
		t.Fatalf("answers %v, want 3 x 200 and 9 x 429", answers)
	}
	m.wantProblem("over quota", 429, refusal, "quota-max-concurrent-jobs")
	if !strings.Contains(string(refusal), "maxConcurrentJobs") {
		t.Fatalf("refusal does not name the quota: %s", refusal)
	}
	// A retried submit gets its job even at the limit.
	var first, again map[string]any
	if code, b := m.do("PUT", "/v1/tenants/default/quota", adminKey, `{"maxConcurrentJobs":4}`, nil); code != 200 {
		t.Fatalf("set quota: %d %s", code, b)
	}
	if code, b := m.do("POST", "/v1/jobs?request_id=r1", apiKey, jobBody, &first); code != 200 {
		t.Fatalf("create r1: %d %s", code, b)
	}
	if code, b := m.do("POST", "/v1/jobs?request_id=r1", apiKey, jobBody, &again); code != 200 || again["id"] != first["id"] {
		t.Fatalf("repeat r1 at the limit: %d %s", code, b)
	}
}

func clientv3WithPrefix() clientv3.OpOption { return clientv3.WithPrefix() }
