package app

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func fileJob(url string) string {
	return `{"profile":"ExtractTechnicalMetadata","input":{"locators":{"inputFile":{"url":"` + url + `"}}}}`
}

// The audit's case through the mediator as deployed: a tenant's file://
// locators must lie under the roots an admin granted it, the bootstrap
// tenant's come from --bootstrap-locator-roots, and roots set over REST
// apply to the next job (on this replica at once, on another within
// tenants.QuotaTTL).
func TestLocatorRootsOverREST(t *testing.T) {
	m := startMediator(t, func(c *Config) { c.AdminAPIKey = adminKey })
	count := func(key string) int {
		t.Helper()
		var list struct{ Jobs []map[string]any }
		if code, b := m.do("GET", "/v1/jobs", key, "", &list); code != 200 {
			t.Fatalf("list: %d %s", code, b)
		}
		return len(list.Jobs)
	}
	wantRefused := func(what, key, tenant, url string) {
		t.Helper()
		code, b := m.do("POST", "/v1/jobs", key, fileJob(url), nil)
		m.wantProblem(what, 403, b, "locator-not-allowed")
		var p map[string]any
		_ = json.Unmarshal(b, &p)
		if code != 403 || p["field"] != "job.input.locators[inputFile]" || !strings.Contains(p["detail"].(string), `tenant "`+tenant+`"`) ||
			!strings.Contains(p["detail"].(string), "PUT /v1/tenants/"+tenant+"/locator-roots") {
			t.Fatalf("%s: %d %s, want 403 naming the field, the tenant and how roots are granted", what, code, b)
		}
	}

	// The bootstrap tenant has the roots it was started with.
	var def tenants.Tenant
	if code, b := m.do("GET", "/v1/tenants/default", adminKey, "", &def); code != 200 || !slices.Equal(def.LocatorRoots, []string{"file:///media/"}) {
		t.Fatalf("bootstrap tenant: %d %s, want roots [file:///media/]", code, b)
	}
	if code, b := m.do("POST", "/v1/jobs", apiKey, fileJob("file:///media/a.mp4"), nil); code != 200 {
		t.Fatalf("default's job under its root: %d %s", code, b)
	}
	wantRefused("default's job outside its root", apiKey, "default", "file:///etc/passwd")

	// A second tenant has no roots: refused the default tenant's file, and
	// nothing is stored.
	if code, b := m.do("POST", "/v1/tenants", adminKey, `{"id":"other"}`, nil); code != 201 {
		t.Fatalf("create tenant: %d %s", code, b)
	}
	var key struct{ ClientSecret string }
	if code, b := m.do("POST", "/v1/tenants/other/keys", adminKey, "", &key); code != 201 {
		t.Fatalf("create key: %d %s", code, b)
	}
	wantRefused("a tenant without roots", key.ClientSecret, "other", "file:///media/a.mp4")
	if n := count(key.ClientSecret); n != 0 {
		t.Fatalf("refused jobs were stored: other lists %d", n)
	}
	conn, err := grpcx.Dial(m.cfg.GRPCAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	gctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+key.ClientSecret)
	_, err = jobsv1.NewJobServiceClient(conn).CreateJob(gctx, &jobsv1.CreateJobRequest{Job: &jobsv1.Job{Profile: "ExtractTechnicalMetadata",
		Input: &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{"inputFile": {Url: "s3://media/default/a.mp4"}}}}})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("gRPC s3 job of a tenant without roots: %v, want PermissionDenied", err)
	}

	// Its own key cannot grant it roots; the admin can, and they apply to
	// its next job.
	code, b := m.do("PUT", "/v1/tenants/other/locator-roots", key.ClientSecret, `{"roots":["file:///"]}`, nil)
	m.wantProblem("a tenant granting itself roots", 403, b, "admin-only")
	if code != 403 {
		t.Fatalf("a tenant granting itself roots: %d", code)
	}
	if code, b := m.do("PUT", "/v1/tenants/other/locator-roots", adminKey, `{"roots":["file:///media/other"]}`, nil); code != 200 {
		t.Fatalf("grant roots: %d %s", code, b)
	}
	if code, b := m.do("POST", "/v1/jobs", key.ClientSecret, fileJob("file:///media/other/a.mp4"), nil); code != 200 {
		t.Fatalf("a job under the roots just granted: %d %s", code, b)
	}
	wantRefused("the default tenant's file", key.ClientSecret, "other", "file:///media/a.mp4")
	wantRefused("a sibling directory", key.ClientSecret, "other", "file:///media/other2/a.mp4")
	wantRefused("a way out", key.ClientSecret, "other", "file:///media/other/../a.mp4")

	// Roots withdrawn through another replica stop the tenant's jobs within
	// the cache's TTL.
	if _, err := tenants.New(m.env.EtcdCli).SetLocatorRoots(context.Background(), "other", nil); err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, tenants.QuotaTTL+5*time.Second, "roots withdrawn on another replica applied", func() bool {
		code, _ := m.do("POST", "/v1/jobs", key.ClientSecret, fileJob("file:///media/other/b.mp4"), nil)
		return code == 403
	})
	if n := count(key.ClientSecret); n < 1 {
		t.Fatalf("other lists %d jobs, want its accepted ones", n)
	}
}

// --bootstrap-locator-roots replaces the bootstrap tenant's roots on every
// start it is given; a start without it leaves them as an admin set them.
func TestBootstrapLocatorRoots(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	ts := tenants.New(env.EtcdCli)
	keys := auth.NewEtcdKeys(env.EtcdCli)
	cfg := Defaults()
	cfg.BootstrapLocatorRoots = []string{"file:///media"}
	roots := func() []string {
		t.Helper()
		tn, err := ts.Tenant(ctx, "default")
		if err != nil {
			t.Fatal(err)
		}
		return tn.LocatorRoots
	}
	if err := bootstrap(ctx, keys, ts, cfg); err != nil {
		t.Fatal(err)
	}
	if got := roots(); !slices.Equal(got, []string{"file:///media/"}) {
		t.Fatalf("first start: roots %q", got)
	}
	if _, err := ts.SetLocatorRoots(ctx, "default", []string{"s3://media/"}); err != nil {
		t.Fatal(err)
	}
	cfg.BootstrapLocatorRoots = nil
	if err := bootstrap(ctx, keys, ts, cfg); err != nil {
		t.Fatal(err)
	}
	if got := roots(); !slices.Equal(got, []string{"s3://media/"}) {
		t.Fatalf("a start without the flag changed the admin's roots to %q", got)
	}
	cfg.BootstrapLocatorRoots = []string{"file:///srv/a/", "file:///srv/b/"}
	if err := bootstrap(ctx, keys, ts, cfg); err != nil {
		t.Fatal(err)
	}
	if got := roots(); !slices.Equal(got, []string{"file:///srv/a/", "file:///srv/b/"}) {
		t.Fatalf("a start with the flag: roots %q", got)
	}
	cfg.BootstrapLocatorRoots = []string{"http://x/"}
	if err := bootstrap(ctx, keys, ts, cfg); err == nil {
		t.Fatal("a start with an http root succeeded")
	}
}
