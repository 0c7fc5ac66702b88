package main_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/jobstate"
)

// Two tenants' media share the workers' file root, as on a shared
// filesystem: tenant acme may use media/acme, beta's files are in
// media/beta. A symlink placed in acme's directory leading into beta's
// passes the mediator's check (its name lies under acme's root) and is
// refused by the worker, which holds every locator a job resolves to the
// roots the job carries: the job FAILs locator-forbidden, naming the
// locator, and nothing is read from or written to beta's directory, while
// acme's own file COMPLETES.
func TestTenantRootsHoldOnTheWorker(t *testing.T) {
	p := setup(t)
	acme, beta := filepath.Join(p.mediaDir, "acme"), filepath.Join(p.mediaDir, "beta")
	for _, d := range []string{acme, beta} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	clip, err := os.ReadFile(p.clip)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(acme, "clip.mp4"), filepath.Join(beta, "secret.mp4")} {
		if err := os.WriteFile(f, clip, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"link.mp4": filepath.Join(beta, "secret.mp4"), "out": beta} {
		if err := os.Symlink(target, filepath.Join(acme, link)); err != nil {
			t.Fatal(err)
		}
	}

	code, body := p.rest(t, "POST", "/v1/tenants", p.stack.AdminKey, `{"id":"acme","locatorRoots":["file://`+acme+`/"]}`)
	if code != http.StatusCreated {
		t.Fatalf("create tenant: %d %s", code, body)
	}
	code, body = p.rest(t, "POST", "/v1/tenants/acme/keys", p.stack.AdminKey, "")
	var key struct{ ClientSecret string }
	if code != http.StatusCreated || json.Unmarshal(body, &key) != nil {
		t.Fatalf("create key: %d %s", code, body)
	}

	own := p.submitGRPCAs(t, key.ClientSecret, "file://"+filepath.Join(acme, "clip.mp4"))
	if own.Status != jobsv1.JobStatus_JOB_STATUS_COMPLETED {
		t.Fatalf("acme's own clip: %s, %+v; want COMPLETED", jobstate.Name(own.Status), own.Error)
	}
	if got := own.GetLocatorRoots().GetRoots(); len(got) != 1 || got[0] != "file://"+acme+"/" {
		t.Errorf("the job carries roots %q, want acme's", got)
	}

	wantForbidden := func(what string, job *jobsv1.Job, locator string) {
		t.Helper()
		e := job.GetError()
		if job.Status != jobsv1.JobStatus_JOB_STATUS_FAILED || !strings.HasSuffix(e.GetType(), ":locator-forbidden") || e.GetStatus() != 403 ||
			!strings.Contains(e.GetDetail(), "outside the tenant's locator roots") || !strings.Contains(e.GetDetail(), locator) ||
			strings.Contains(e.GetDetail(), "beta") {
			t.Errorf("%s: %s, %+v; want FAILED locator-forbidden naming %s as outside the tenant's roots, and not where it leads",
				what, jobstate.Name(job.Status), e, locator)
		}
	}
	link := "file://" + filepath.Join(acme, "link.mp4")
	wantForbidden("a symlink into beta's directory", p.submitGRPCAs(t, key.ClientSecret, link), link)

	// An output location whose directory leads into beta's is refused
	// before any work, and nothing lands there.
	ctx := p.authed(context.Background(), key.ClientSecret)
	out := "file://" + filepath.Join(acme, "out") + "/"
	job, err := p.grpc.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: &jobsv1.Job{
		Profile: "CreateProxy",
		Input: &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{
			"inputFile": {Url: "file://" + filepath.Join(acme, "clip.mp4")}, "outputLocation": {Url: out},
		}},
	}})
	if err != nil {
		t.Fatalf("create proxy job: %v", err)
	}
	wantForbidden("an output location leading into beta's directory", p.waitGRPCAs(t, key.ClientSecret, job.Id), out)
	if entries, err := os.ReadDir(beta); err != nil || len(entries) != 1 {
		t.Errorf("beta's directory holds %d entries (%v), want only its own file", len(entries), err)
	}
}
