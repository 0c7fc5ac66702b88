package jobapi

import (
	"context"
	"errors"
	"github.com/medius-platform/medius/pkg/registryclient"
	"testing"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestInputMatchesProfileTypes(t *testing.T) {
	profile := &registryv1.JobProfile{Name: "Thumb", JobType: "TransformJob",
		InputParameters: []*registryv1.ParameterSpec{{Name: "inputFile", Type: "locator"}, {Name: "position", Type: "number"}},
		OptionalInputParameters: []*registryv1.ParameterSpec{{Name: "width", Type: "integer"}, {Name: "sharp", Type: "boolean"},
			{Name: "label", Type: "string"}, {Name: "crop", Type: "object"}, {Name: "sizes", Type: "array"}}}
	job := func(params map[string]any, locators ...string) *jobsv1.Job {
		st, err := structpb.NewStruct(params)
		if err != nil {
			t.Fatal(err)
		}
		in := &jobsv1.JobInput{Parameters: st, Locators: map[string]*jobsv1.Locator{}}
		for _, l := range locators {
			in.Locators[l] = &jobsv1.Locator{Url: "file:///media/clip.mp4"}
		}
		return &jobsv1.Job{Profile: "Thumb", Input: in}
	}
	for _, tc := range []struct {
		name  string
		job   *jobsv1.Job
		field string // "" = accepted
	}{
		{"all good", job(map[string]any{"position": 1.5, "width": 320, "sharp": true, "label": "x", "crop": map[string]any{"x": 1}, "sizes": []any{1, 2}}, "inputFile"), ""},
		{"integer is a number", job(map[string]any{"position": 2}, "inputFile"), ""},
		{"missing required", job(map[string]any{"position": 2}), "job.input.inputFile"},
		{"number as string", job(map[string]any{"position": "2"}, "inputFile"), "job.input.position"},
		{"fractional integer", job(map[string]any{"position": 2, "width": 1.5}, "inputFile"), "job.input.width"},
		{"boolean as string", job(map[string]any{"position": 2, "sharp": "yes"}, "inputFile"), "job.input.sharp"},
		{"locator for a string", job(map[string]any{"position": 2}, "inputFile", "label"), "job.input.label"},
		{"object as array", job(map[string]any{"position": 2, "crop": []any{}}, "inputFile"), "job.input.crop"},
		{"locator as a number", job(map[string]any{"position": 2, "inputFile": 3}), "job.input.inputFile"},
		{"locator as a string that is no URL", job(map[string]any{"position": 2, "inputFile": "x"}), "job.input.inputFile"},
		{"locator as a URL of another scheme", job(map[string]any{"position": 2, "inputFile": "ftp://example.com/a.mp4"}), "job.input.inputFile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateAgainstProfile(tc.job, profile)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			st := status.Convert(problem.ToStatus(t.Context(), err))
			if st.Code() != codes.InvalidArgument || problem.FromStatus(st).GetField() != tc.field {
				t.Fatalf("got %v (field %q), want InvalidArgument naming %s", err, problem.FromStatus(st).GetField(), tc.field)
			}
		})
	}
}

// A locator given as a URL string parameter becomes a locator, where
// workers look for it.
func TestLocatorStringBecomesLocator(t *testing.T) {
	profile := &registryv1.JobProfile{Name: "Probe", InputParameters: []*registryv1.ParameterSpec{{Name: "inputFile", Type: "locator"}}}
	st, _ := structpb.NewStruct(map[string]any{"inputFile": "https://example.com/a.mp4", "other": 1})
	job := &jobsv1.Job{Input: &jobsv1.JobInput{Parameters: st}}
	if err := validateAgainstProfile(job, profile); err != nil {
		t.Fatal(err)
	}
	if got := job.GetInput().GetLocators()["inputFile"].GetUrl(); got != "https://example.com/a.mp4" {
		t.Fatalf("locator inputFile = %q", got)
	}
	if _, still := job.GetInput().GetParameters().GetFields()["inputFile"]; still {
		t.Fatal("inputFile left among the parameters")
	}
	if _, kept := job.GetInput().GetParameters().GetFields()["other"]; !kept {
		t.Fatal("another parameter was dropped")
	}
}

// Profiles come from the registry's watched copy without a round trip, and
// a change applies to the next lookup; the registry itself is asked only
// until the copy is synced and for names the copy does not hold, so a
// profile just created is usable at once.
func TestWatchedProfiles(t *testing.T) {
	ctx := context.Background()
	reg := &standInRegistry{profiles: map[string]*registryv1.JobProfile{"P": {Name: "P", MaxAttempts: 1}}}
	cache := registryclient.NewCache(nil)
	w := WatchedProfiles{Cache: cache, Fallback: reg}
	if p, err := w.GetJobProfile(ctx, "P"); err != nil || p.GetMaxAttempts() != 1 || reg.calls != 1 {
		t.Fatalf("before the copy is synced: %v %v, %d registry calls", p, err, reg.calls)
	}
	put := func(rev int64, p *registryv1.JobProfile) *registryv1.Change {
		return &registryv1.Change{Type: registryv1.Change_TYPE_PUT, Kind: registryv1.ResourceKind_RESOURCE_KIND_JOB_PROFILE, Name: p.GetName(), Revision: rev,
			Resource: &registryv1.Change_Profile{Profile: p}}
	}
	cache.Apply(&registryv1.WatchResponse{Revision: 5, Resync: true, Synced: true, Changes: []*registryv1.Change{put(5, &registryv1.JobProfile{Name: "P", MaxAttempts: 2})}})
	for range 3 {
		if p, err := w.GetJobProfile(ctx, "P"); err != nil || p.GetMaxAttempts() != 2 {
			t.Fatalf("from the copy: %v %v", p, err)
		}
	}
	cache.Apply(&registryv1.WatchResponse{Revision: 6, Synced: true, Changes: []*registryv1.Change{put(6, &registryv1.JobProfile{Name: "P", MaxAttempts: 3})}})
	if p, _ := w.GetJobProfile(ctx, "P"); p.GetMaxAttempts() != 3 {
		t.Fatalf("after a change: max attempts %d, want 3", p.GetMaxAttempts())
	}
	if reg.calls != 1 {
		t.Fatalf("%d registry calls once synced, want none more", reg.calls-1)
	}
	// Created in the registry, its change not yet here.
	reg.profiles["Q"] = &registryv1.JobProfile{Name: "Q"}
	if p, err := w.GetJobProfile(ctx, "Q"); err != nil || p.GetName() != "Q" {
		t.Fatalf("profile just created: %v %v", p, err)
	}
	if _, err := w.GetJobProfile(ctx, "R"); !errors.Is(err, ErrProfileNotFound) {
		t.Fatalf("unknown profile: %v", err)
	}
}
