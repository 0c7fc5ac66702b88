package profiles

import (
	"math"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/testmedia"
	"github.com/medius-platform/medius/pkg/workersdk"
)

func TestExtractText(t *testing.T) {
	t.Parallel() // the tools are separate processes: overlap their start-up and I/O
	dir := t.TempDir()
	video := testmedia.Captions(t, dir, []testmedia.Caption{{Text: "MEDIUS PLATFORM", Start: 0, End: 1.9}, {Text: "BROADCAST NEWS", Start: 2, End: 4}})
	for _, s := range stores(t) {
		t.Run(s.name, func(t *testing.T) {
			out, qty, err := run(t, OCRProfile(s.res), workItem(ExtractText, s.input(t, video, "captions.mp4"), "", nil))
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(qty-4) > 0.2 {
				t.Errorf("verified quantity = %v, want 4", qty)
			}
			got := map[float64]string{}
			for _, r := range out.GetData().GetFields()[ParamText].GetListValue().AsSlice() {
				m := r.(map[string]any)
				got[m["time"].(float64)] = m["text"].(string)
				for _, w := range m["words"].([]any) {
					b := w.(map[string]any)["box"].(map[string]any)
					if b["top"].(float64) < 60 || b["top"].(float64) > 130 || b["width"].(float64) <= 0 {
						t.Errorf("word %v: box not where the text was drawn (y 90)", w)
					}
				}
			}
			for tm, want := range map[float64]string{0: "MEDIUS PLATFORM", 1: "MEDIUS PLATFORM", 2: "BROADCAST NEWS", 3: "BROADCAST NEWS"} {
				if got[tm] != want {
					t.Errorf("text at %vs = %q, want %q (all: %v)", tm, got[tm], want, got)
				}
			}
		})
	}
	t.Run("image", func(t *testing.T) {
		img := filepath.Join(dir, "frame.png")
		if b, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-ss", "2.5", "-i", video, "-frames:v", "1", img).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, b)
		}
		out, qty, err := run(t, OCRProfile(&locator.Resolver{Roots: []string{dir}}), workItem(ExtractText, "file://"+img, "", nil))
		if err != nil {
			t.Fatal(err)
		}
		res := out.GetData().GetFields()[ParamText].GetListValue().AsSlice()
		if len(res) != 1 || !strings.Contains(res[0].(map[string]any)["text"].(string), "BROADCAST NEWS") || qty != 1 {
			t.Errorf("image text = %v (quantity %v), want BROADCAST NEWS, 1", res, qty)
		}
	})
	t.Run("not media", func(t *testing.T) {
		bad := badInputs(t, dir, video)
		_, _, err := run(t, OCRProfile(&locator.Resolver{Roots: []string{dir}}), workItem(ExtractText, "file://"+bad["not media"], "", nil))
		wantProblem(t, err, workersdk.TypeInvalidInput, "inputFile")
	})
}
