package profiles

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/testmedia"
	"github.com/medius-platform/medius/pkg/workersdk"
)

// Benchmarks report x-realtime: seconds of media processed per second of
// wall time on this machine (higher is faster). Run with
// go test -run '^$' -bench . ./internal/profiles

const benchSeconds = 10.0

// benchClip is 10 s of 1280x720 25 fps H.264 with a tone: broadcast-like
// enough for the ratios to mean something.
func benchClip(b *testing.B, dir string) string {
	b.Helper()
	out := filepath.Join(dir, "bench.mp4")
	cmd := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
		"-f", "lavfi", "-i", "testsrc2=duration=10:size=1280x720:rate=25",
		"-f", "lavfi", "-i", "sine=frequency=440:duration=10",
		"-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", "-shortest", out)
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("bench clip: %v\n%s", err, o)
	}
	return out
}

func benchProfile(b *testing.B, p workersdk.Profile, in, out string, params map[string]any, seconds float64) {
	b.Helper()
	item := workItem(p.Spec.GetName(), in, out, params)
	for b.Loop() {
		if _, _, err := p.Handler(b.Context(), item, func(int) {}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(seconds*float64(b.N)/b.Elapsed().Seconds(), "x-realtime")
}

func benchSetup(b *testing.B) (*locator.Resolver, string, string) {
	dir := b.TempDir()
	return &locator.Resolver{Roots: []string{dir}}, dir, benchClip(b, dir)
}

func BenchmarkTranscode720p(b *testing.B) {
	res, dir, clip := benchSetup(b)
	benchProfile(b, TranscodeProfile(res, Transcode), "file://"+clip, "file://"+dir+"/out", nil, benchSeconds)
}

func BenchmarkCreateProxy(b *testing.B) {
	res, dir, clip := benchSetup(b)
	benchProfile(b, TranscodeProfile(res, CreateProxy), "file://"+clip, "file://"+dir+"/out", nil, benchSeconds)
}

func BenchmarkExtractThumbnails(b *testing.B) {
	res, dir, clip := benchSetup(b)
	benchProfile(b, ThumbnailsProfile(res), "file://"+clip, "file://"+dir+"/out", map[string]any{ParamInterval: 1}, benchSeconds)
}

func BenchmarkMeasureLoudness(b *testing.B) {
	res, _, clip := benchSetup(b)
	benchProfile(b, LoudnessProfile(res), "file://"+clip, "", nil, benchSeconds)
}

func BenchmarkDetectShots(b *testing.B) {
	res, _, clip := benchSetup(b)
	benchProfile(b, ShotsProfile(res), "file://"+clip, "", nil, benchSeconds)
}

func BenchmarkExtractText(b *testing.B) {
	dir := b.TempDir()
	video := testmedia.Captions(b, dir, []testmedia.Caption{{Text: "MEDIUS PLATFORM", Start: 0, End: 2}, {Text: "BROADCAST NEWS", Start: 2, End: 4}})
	benchProfile(b, OCRProfile(&locator.Resolver{Roots: []string{dir}}), "file://"+video, "", nil, 4)
}

func BenchmarkExtractTechnicalMetadata(b *testing.B) {
	res, _, clip := benchSetup(b)
	benchProfile(b, TechnicalMetadata(res), "file://"+clip, "", nil, benchSeconds)
}

func BenchmarkSpeechToText(b *testing.B) {
	dir := b.TempDir()
	speech := testmedia.Speech(b, dir, "the president said on monday that the government would cut taxes")
	_, seconds, err := Probe(b.Context(), speech)
	if err != nil {
		b.Fatal(err)
	}
	res := &locator.Resolver{Roots: []string{dir}}
	benchProfile(b, SpeechProfile(res), "file://"+speech, "file://"+dir+"/out", nil, seconds)
}
