package jobapi

import (
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
		{"locator as a URL string", job(map[string]any{"position": 2, "inputFile": "https://example.com/a.mp4"}), ""},
		{"missing required", job(map[string]any{"position": 2}), "job.input.inputFile"},
		{"number as string", job(map[string]any{"position": "2"}, "inputFile"), "job.input.position"},
		{"fractional integer", job(map[string]any{"position": 2, "width": 1.5}, "inputFile"), "job.input.width"},
		{"boolean as string", job(map[string]any{"position": 2, "sharp": "yes"}, "inputFile"), "job.input.sharp"},
		{"locator for a string", job(map[string]any{"position": 2}, "inputFile", "label"), "job.input.label"},
		{"object as array", job(map[string]any{"position": 2, "crop": []any{}}, "inputFile"), "job.input.crop"},
		{"locator as a number", job(map[string]any{"position": 2, "inputFile": 3}), "job.input.inputFile"},
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
