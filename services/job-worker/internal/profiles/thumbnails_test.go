package profiles

import (
	"image"
	_ "image/jpeg"
	_ "image/png"
	"os"
	"testing"

	"github.com/medius-platform/medius/pkg/workersdk"
)

func decodeImage(t *testing.T, path string) (image.Image, string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, format, err := image.Decode(f)
	if err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	return img, format
}

func TestExtractThumbnails(t *testing.T) {
	t.Parallel() // the tools are separate processes: overlap their start-up and I/O
	_, clip := fixture(t)
	for _, s := range stores(t) {
		t.Run(s.name, func(t *testing.T) {
			in := s.input(t, clip, "clip.mp4")
			out, qty, err := run(t, ThumbnailsProfile(s.res), workItem(ExtractThumbnails, in, s.outputLocation(t),
				map[string]any{ParamTimes: []any{0.5, 2.9}, ParamFormat: "png", ParamWidth: 160}))
			if err != nil {
				t.Fatal(err)
			}
			thumbs := out.GetData().GetFields()[ParamThumbnails].GetListValue().AsSlice()
			if len(thumbs) != 2 || qty < 2.8 {
				t.Fatalf("thumbnails = %v, quantity %v; want 2 for 3 s", thumbs, qty)
			}
			for _, th := range thumbs {
				img, format := decodeImage(t, s.fetch(t, th.(map[string]any)["url"].(string)))
				if format != "png" || img.Bounds().Dx() != 160 || img.Bounds().Dy() != 120 {
					t.Errorf("thumbnail %v: %s %v, want png 160x120", th, format, img.Bounds())
				}
			}

			out, _, err = run(t, ThumbnailsProfile(s.res), workItem(ExtractThumbnails, in, s.outputLocation(t)+"every",
				map[string]any{ParamInterval: 1}))
			if err != nil {
				t.Fatal(err)
			}
			thumbs = out.GetData().GetFields()[ParamThumbnails].GetListValue().AsSlice()
			if len(thumbs) != 3 {
				t.Fatalf("every 1 s of 3 s: %d thumbnails, want 3", len(thumbs))
			}
			for i, th := range thumbs {
				if tm := th.(map[string]any)["time"]; tm != float64(i) {
					t.Errorf("thumbnail %d at %v, want %d", i, tm, i)
				}
				if _, format := decodeImage(t, s.fetch(t, th.(map[string]any)["url"].(string))); format != "jpeg" {
					t.Errorf("default format %s, want jpeg", format)
				}
			}
		})
	}
	t.Run("past the end", func(t *testing.T) {
		s := stores(t)[0]
		_, _, err := run(t, ThumbnailsProfile(s.res), workItem(ExtractThumbnails, s.input(t, clip, "clip.mp4"), s.outputLocation(t),
			map[string]any{ParamTimes: []any{10}}))
		wantProblem(t, err, workersdk.TypeInvalidInput, "past the end")
	})
}
