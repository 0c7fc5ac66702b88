package workersdk_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/protobuf/types/known/structpb"
)

// A custom profile that resolves a URL from a parameter the mediator does
// not type as a locator (so never checked against the tenant's roots) is
// held to the job's roots all the same: the SDK hands its handler a ctx
// carrying the work item's roots, and the resolver enforces them. An item
// without roots (from an older processor) keeps the worker's own roots
// only; an item with an empty set resolves no file:// or s3:// locator.
func TestHandlersResolveUnderTheJobsRoots(t *testing.T) {
	media := t.TempDir()
	for _, tenant := range []string{"acme", "beta"} {
		if err := os.MkdirAll(filepath.Join(media, tenant), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(media, tenant, "clip.txt"), []byte(tenant+" clip"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	res := &locator.Resolver{Roots: []string{media}, TempDir: t.TempDir()}
	// Fetch reads the URL in its untyped parameter "src".
	fetch := workersdk.Profile{
		Spec: &registryv1.JobProfile{Name: "Fetch", JobType: "QAJob"},
		Handler: func(ctx context.Context, item *workersdk.WorkItem, _ func(int)) (*jobsv1.JobOutput, float64, error) {
			src := item.GetInput().GetParameters().GetFields()["src"].GetStringValue()
			p, cleanup, err := res.Open(ctx, src)
			defer cleanup()
			if err != nil {
				return nil, 0, workersdk.InputError("src", src, err)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, 0, err
			}
			return &jobsv1.JobOutput{Data: &structpb.Struct{Fields: map[string]*structpb.Value{"read": structpb.NewStringValue(string(b))}}}, 0, nil
		},
	}
	g := newRig(t)
	updates := g.collect(t)
	g.run(t, workersdk.Config{Capacity: 2, FetchWait: 200 * time.Millisecond, Profiles: []workersdk.Profile{fetch}})

	acme := &jobsv1.LocatorRoots{Roots: []string{"file://" + filepath.Join(media, "acme") + "/", "s3://shared/acme/"}}
	beta := "file://" + filepath.Join(media, "beta", "clip.txt")
	for _, tc := range []struct {
		job   string
		roots *jobsv1.LocatorRoots
		src   string
		want  string // what it read, or the refusal's reason
	}{
		{"acme-own", acme, "file://" + filepath.Join(media, "acme", "clip.txt"), "acme clip"},
		{"acme-beta", acme, beta, "outside the tenant's locator roots"},
		{"acme-beta-s3", acme, "s3://shared/beta/clip.txt", "outside the tenant's locator roots"},
		{"none", &jobsv1.LocatorRoots{}, "file://" + filepath.Join(media, "acme", "clip.txt"), "the tenant has no locator roots"},
		{"old-producer", nil, beta, "beta clip"},
	} {
		item := &eventsv1.WorkItem{JobId: tc.job, Tenant: "t1", Attempt: 1, Profile: "Fetch", JobType: "QAJob", Service: rigService,
			LocatorRoots: tc.roots, Input: &jobsv1.JobInput{Parameters: &structpb.Struct{Fields: map[string]*structpb.Value{"src": structpb.NewStringValue(tc.src)}}}}
		if err := bus.Publish(t.Context(), g.tjs, bus.SubjectWork(rigService, tc.job), "work-"+tc.job+"-1", item); err != nil {
			t.Fatal(err)
		}
		var end *eventsv1.ExecutionUpdate
		checkFor(t, 10*time.Second, func() bool {
			us := updates.of(tc.job)
			if len(us) == 0 {
				return false
			}
			end = us[len(us)-1]
			return end.GetStatus() == jobsv1.JobStatus_JOB_STATUS_COMPLETED || end.GetStatus() == jobsv1.JobStatus_JOB_STATUS_FAILED
		}, func() string { return tc.job + " did not end" })
		if end.GetStatus() == jobsv1.JobStatus_JOB_STATUS_COMPLETED {
			if got := end.GetOutput().GetData().GetFields()["read"].GetStringValue(); got != tc.want {
				t.Errorf("%s read %q, want %q", tc.job, got, tc.want)
			}
			continue
		}
		p := end.GetError()
		if p.GetType() != problem.TypePrefix+workersdk.TypeLocatorForbidden || p.GetStatus() != 403 ||
			!strings.Contains(p.GetDetail(), tc.want) || !strings.Contains(p.GetDetail(), tc.src) {
			t.Errorf("%s: %v, want %s (403) naming %s: %q", tc.job, p, workersdk.TypeLocatorForbidden, tc.src, tc.want)
		}
	}
}
