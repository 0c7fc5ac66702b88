package profiles

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/pkg/testmedia"
	"github.com/medius-platform/medius/pkg/workersdk"
)

var (
	fixtureOnce sync.Once
	fixtureDir  string
	fixturePath string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fixtureDir != "" {
		_ = os.RemoveAll(fixtureDir)
	}
	os.Exit(code)
}

func fixture(t *testing.T) (dir, path string) {
	t.Helper()
	fixtureOnce.Do(func() {
		d, err := os.MkdirTemp("", "medius-fixture-")
		if err != nil {
			t.Fatal(err)
		}
		fixtureDir = d
		fixturePath = testmedia.Clip(t, d)
	})
	if fixturePath == "" {
		t.Fatal("fixture unavailable")
	}
	return fixtureDir, fixturePath
}

func TestProbe(t *testing.T) {
	_, path := fixture(t)
	meta, dur, err := Probe(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(dur-3) > 0.2 {
		t.Errorf("duration = %v, want about 3", dur)
	}
	m := meta.AsMap()
	format := m["format"].(map[string]any)
	if !strings.Contains(format["formatName"].(string), "mp4") {
		t.Errorf("formatName = %v", format["formatName"])
	}
	for _, k := range []string{"duration", "size", "bitRate"} {
		if _, ok := format[k].(float64); !ok {
			t.Errorf("format.%s = %#v, want a number", k, format[k])
		}
	}
	var video, audio map[string]any
	for _, s := range m["streams"].([]any) {
		s := s.(map[string]any)
		switch s["codecType"] {
		case "video":
			video = s
		case "audio":
			audio = s
		}
	}
	if video == nil || audio == nil {
		t.Fatalf("streams = %v, want a video and an audio stream", m["streams"])
	}
	if video["codecName"] != "h264" || video["width"] != 320.0 || video["height"] != 240.0 {
		t.Errorf("video = %v, want h264 320x240", video)
	}
	if _, ok := video["sampleRate"]; ok {
		t.Errorf("video has a sampleRate: absent fields must be omitted")
	}
	if sr := audio["sampleRate"]; audio["codecName"] != "aac" || (sr != 44100.0 && sr != 48000.0) {
		t.Errorf("audio = %v, want aac at 44.1 or 48 kHz", audio)
	}
	if audio["channels"] != 1.0 {
		t.Errorf("audio channels = %v, want 1", audio["channels"])
	}
}

func TestProbeNotMedia(t *testing.T) {
	p := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(p, []byte("not media at all"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := Probe(t.Context(), p)
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Type != workersdk.TypeToolFailed || !strings.Contains(pe.Detail, "ffprobe") {
		t.Fatalf("err = %v, want tool-failed naming ffprobe", err)
	}
}

func TestProbeCanceled(t *testing.T) {
	_, path := fixture(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, _, err := Probe(ctx, path); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestTechnicalMetadataHandler(t *testing.T) {
	dir, path := fixture(t)
	h := TechnicalMetadata(&locator.Resolver{Roots: []string{dir}}).Handler
	item := func(url string) *eventsv1.WorkItem {
		return &eventsv1.WorkItem{JobId: "j1", Attempt: 1, Profile: ExtractTechnicalMetadata, Input: &jobsv1.JobInput{
			Locators: map[string]*jobsv1.Locator{ParamInputFile: {Url: url}},
		}}
	}
	var last int
	out, qty, err := h(t.Context(), item("file://"+path), func(p int) { last = p })
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(qty-3) > 0.2 {
		t.Errorf("verified quantity = %v, want about 3", qty)
	}
	if last != 100 {
		t.Errorf("last progress = %d, want 100", last)
	}
	tm := out.GetData().GetFields()[ParamTechnicalMetadata].GetStructValue().AsMap()
	if d := tm["format"].(map[string]any)["duration"].(float64); math.Abs(d-3) > 0.2 {
		t.Errorf("technicalMetadata.format.duration = %v", d)
	}

	for _, tt := range []struct {
		name, url, typ, field string
	}{
		{"missing file", "file://" + filepath.Join(dir, "nope.mp4"), workersdk.TypeInputNotFound, "input.locators.inputFile"},
		{"outside roots", "file:///etc/passwd", workersdk.TypeLocatorForbidden, "input.locators.inputFile"},
		{"no locator", "", workersdk.TypeInvalidInput, "input.locators.inputFile"},
		{"s3", "s3://bucket/key.mp4", workersdk.TypeUnsupportedLocator, "input.locators.inputFile"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := h(t.Context(), item(tt.url), func(int) {})
			var pe *problem.Error
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want a problem", err)
			}
			if pe.Type != tt.typ || pe.Field != tt.field || !strings.Contains(pe.Detail, "inputFile") {
				t.Errorf("problem = %+v, want type %s field %s naming inputFile", pe, tt.typ, tt.field)
			}
		})
	}
}
