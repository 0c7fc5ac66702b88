package profiles

import (
	"context"
	"image"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/testmedia"
	"github.com/medius-platform/medius/pkg/workersdk"
)

// foundFace is one entry of the faces output.
type foundFace struct {
	time     float64
	timecode string
	box      image.Rectangle
	norm     [4]float64
}

func facesOf(t *testing.T, out *jobsv1.JobOutput) ([]foundFace, map[string]any) {
	t.Helper()
	var faces []foundFace
	for _, v := range out.GetData().GetFields()[ParamFaces].GetListValue().AsSlice() {
		m := v.(map[string]any)
		b := m["box"].(map[string]any)
		n := m["normalizedBox"].(map[string]any)
		x, y := int(b["x"].(float64)), int(b["y"].(float64))
		faces = append(faces, foundFace{
			time: m["time"].(float64), timecode: m["timecode"].(string),
			box:  image.Rect(x, y, x+int(b["width"].(float64)), y+int(b["height"].(float64))),
			norm: [4]float64{n["x"].(float64), n["y"].(float64), n["width"].(float64), n["height"].(float64)},
		})
	}
	return faces, out.GetData().GetFields()[ParamFaceSummary].GetStructValue().AsMap()
}

// iou is the intersection over union of two boxes.
func iou(a, b image.Rectangle) float64 {
	in := a.Intersect(b)
	area := func(r image.Rectangle) float64 { return float64(r.Dx() * r.Dy()) }
	return area(in) / (area(a) + area(b) - area(in))
}

// wantFaceAt checks f is the marked face of a frame of size w x h.
func wantFaceAt(t *testing.T, f foundFace, want image.Rectangle, w, h int) {
	t.Helper()
	if v := iou(f.box, want); v < 0.5 {
		t.Errorf("face at %vs: box %v, want it over the face at %v (IoU %.2f < 0.5)", f.time, f.box, want, v)
	}
	px := [4]float64{float64(f.box.Min.X) / float64(w), float64(f.box.Min.Y) / float64(h), float64(f.box.Dx()) / float64(w), float64(f.box.Dy()) / float64(h)}
	for i := range px {
		if math.Abs(px[i]-f.norm[i]) > 0.002 {
			t.Errorf("face at %vs: normalizedBox %v does not match box %v in %dx%d", f.time, f.norm, f.box, w, h)
			break
		}
	}
}

func TestDetectFaces(t *testing.T) {
	t.Parallel() // the tools are separate processes: overlap their start-up and I/O
	eng := DefaultFaceEngine()
	dir := t.TempDir()
	video := testmedia.FaceVideo(t, dir)
	photo := testmedia.Face(t, dir)
	local := &locator.Resolver{Roots: []string{dir}}

	// The face is shown for 0-2 s, the testsrc2 pattern for 2-4 s.
	for _, s := range stores(t) {
		t.Run(s.name, func(t *testing.T) {
			out, qty, err := run(t, FacesProfile(s.res, eng), workItem(DetectFaces, s.input(t, video, "faces.mp4"), "", nil))
			if err != nil {
				t.Fatal(err)
			}
			faces, sum := facesOf(t, out)
			t.Logf("faces %+v, summary %v", faces, sum)
			if math.Abs(qty-4) > 0.1 {
				t.Errorf("verified quantity = %v, want 4", qty)
			}
			if sum["framesAnalysed"] != 4.0 || sum["framesWithFaces"] != 2.0 || sum["width"] != 1280.0 || sum["height"] != 720.0 ||
				!strings.HasPrefix(sum["engine"].(string), "OpenCV 4.") {
				t.Errorf("summary = %v, want 4 frames of 1280x720, 2 with faces, engine OpenCV 4", sum)
			}
			if len(faces) != 2 {
				t.Fatalf("faces = %+v, want one at 0 s and one at 1 s", faces)
			}
			for i, want := range []string{"00:00:00.000", "00:00:01.000"} {
				if faces[i].time != float64(i) || faces[i].timecode != want {
					t.Errorf("face %d at %v (%s), want %d s (%s)", i, faces[i].time, faces[i].timecode, i, want)
				}
				wantFaceAt(t, faces[i], testmedia.FaceVideoBox, 1280, 720)
			}
		})
	}
	t.Run("every half second", func(t *testing.T) {
		out, _, err := run(t, FacesProfile(local, eng), workItem(DetectFaces, "file://"+video, "", map[string]any{ParamInterval: 0.5}))
		if err != nil {
			t.Fatal(err)
		}
		faces, sum := facesOf(t, out)
		var times []float64
		for _, f := range faces {
			times = append(times, f.time)
		}
		if sum["framesAnalysed"] != 8.0 || !slices.Equal(times, []float64{0, 0.5, 1, 1.5}) {
			t.Errorf("faces at %v in %v frames, want 0, 0.5, 1, 1.5 in 8", times, sum["framesAnalysed"])
		}
	})
	t.Run("image", func(t *testing.T) {
		out, qty, err := run(t, FacesProfile(local, eng), workItem(DetectFaces, "file://"+photo, "", nil))
		if err != nil {
			t.Fatal(err)
		}
		faces, sum := facesOf(t, out)
		t.Logf("faces %+v", faces)
		if qty != 1 || len(faces) != 1 || faces[0].timecode != "00:00:00.000" {
			t.Fatalf("image: faces %+v, quantity %v; want 1 face, quantity 1", faces, qty)
		}
		wantFaceAt(t, faces[0], testmedia.FaceBox, 320, 320)
		if _, ok := sum["interval"]; ok || sum["framesAnalysed"] != 1.0 {
			t.Errorf("image summary = %v, want 1 frame and no interval", sum)
		}
	})
	t.Run("face too small", func(t *testing.T) {
		// The face is 72 px of a 320 px image: under a third of its height.
		out, _, err := run(t, FacesProfile(local, eng), workItem(DetectFaces, "file://"+photo, "", map[string]any{ParamMinFaceSize: 0.33}))
		if err != nil {
			t.Fatal(err)
		}
		if faces, _ := facesOf(t, out); len(faces) != 0 {
			t.Errorf("faces = %+v, want none at least a third of the height", faces)
		}
	})
	t.Run("no face", func(t *testing.T) {
		ndir := t.TempDir()
		scenes := testmedia.Scenes(t, ndir) // testsrc, smptebars, mandelbrot
		out, qty, err := run(t, FacesProfile(&locator.Resolver{Roots: []string{ndir}}, eng), workItem(DetectFaces, "file://"+scenes, "", map[string]any{ParamInterval: 0.2}))
		if err != nil {
			t.Fatal(err)
		}
		faces, sum := facesOf(t, out)
		if len(faces) != 0 || sum["framesAnalysed"] != 18.0 || math.Abs(qty-3.6) > 0.1 {
			t.Errorf("faces in test patterns: %+v, summary %v, quantity %v; want none in 18 frames, 3.6", faces, sum, qty)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		bad := badInputs(t, dir, video)
		bad["no picture"] = testmedia.Tone(t, dir, -23)
		for name, p := range bad {
			_, _, err := run(t, FacesProfile(local, eng), workItem(DetectFaces, "file://"+p, "", nil))
			t.Log(name, err)
			wantProblem(t, err, workersdk.TypeInvalidInput, "inputFile")
		}
		_, _, err := run(t, FacesProfile(local, eng), workItem(DetectFaces, "file://"+bad["no picture"], "", nil))
		wantProblem(t, err, workersdk.TypeInvalidInput, "no video stream")
	})
	t.Run("bad parameters", func(t *testing.T) {
		for param, v := range map[string]any{ParamMinNeighbors: 2.5, ParamInterval: 0.0, ParamMinFaceSize: "big"} {
			_, _, err := run(t, FacesProfile(local, eng), workItem(DetectFaces, "file://"+photo, "", map[string]any{param: v}))
			wantProblem(t, err, workersdk.TypeInvalidInput, param)
		}
	})
}

// A worker without the engine says which Debian package is missing, both
// at start-up (Check) and in a job's problem.
func TestFaceEngineMissing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	photo := testmedia.Face(t, dir)
	// A Python that cannot import cv2: Debian's, without its site packages.
	noCV := filepath.Join(dir, "python-without-opencv")
	if err := os.WriteFile(noCV, []byte("#!/bin/sh\nexec /usr/bin/python3 -S \"$@\"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	def := DefaultFaceEngine()
	v, err := def.Check(t.Context())
	if err != nil || !strings.HasPrefix(v, "OpenCV 4.") {
		t.Fatalf("Check() = %q, %v; want OpenCV 4 (make tools installs python3-opencv and opencv-data)", v, err)
	}
	t.Logf("engine: %s", v)
	for _, c := range []struct {
		name string
		eng  FaceEngine
		pkg  string
	}{
		{"no cascade", FaceEngine{Python: def.Python, Cascade: filepath.Join(dir, "missing.xml"), Confirm: def.Confirm}, "opencv-data"},
		{"no second cascade", FaceEngine{Python: def.Python, Cascade: def.Cascade, Confirm: filepath.Join(dir, "missing.xml")}, "opencv-data"},
		{"not a cascade", FaceEngine{Python: def.Python, Cascade: photo, Confirm: def.Confirm}, "opencv-data"},
		{"no cv2", FaceEngine{Python: noCV, Cascade: def.Cascade, Confirm: def.Confirm}, "python3-opencv"},
		{"no python", FaceEngine{Python: filepath.Join(dir, "python3"), Cascade: def.Cascade, Confirm: def.Confirm}, "python3-opencv"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.eng.Check(t.Context())
			wantProblem(t, err, workersdk.TypeToolFailed, "Debian package "+c.pkg)
			_, _, err = run(t, FacesProfile(&locator.Resolver{Roots: []string{dir}}, c.eng), workItem(DetectFaces, "file://"+photo, "", nil))
			wantProblem(t, err, workersdk.TypeToolFailed, "Debian package "+c.pkg)
			t.Log(err)
		})
	}
}

// Cancel mid-detection kills the detector and ffmpeg: no tool process is
// left behind.
func TestDetectFacesCanceled(t *testing.T) {
	dir := t.TempDir()
	video := testmedia.FaceVideo(t, dir)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	working := make(chan struct{})
	done := make(chan error, 1)
	// Every frame: 100 of them, several seconds of detection.
	item := workItem(DetectFaces, "file://"+video, "", map[string]any{ParamInterval: 0.04})
	go func() {
		_, _, err := FacesProfile(&locator.Resolver{Roots: []string{dir}}, DefaultFaceEngine()).Handler(ctx, item, func(p int) {
			if p > 0 && p < 50 {
				select {
				case <-working:
				default:
					close(working)
				}
			}
		})
		done <- err
	}()
	select {
	case <-working:
	case err := <-done:
		t.Fatalf("detection ended before it could be canceled: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no progress from the detector")
	}
	if len(childProcesses("python3")) == 0 || len(childProcesses("ffmpeg")) == 0 {
		t.Fatalf("detector %v and ffmpeg %v should both be running", childProcesses("python3"), childProcesses("ffmpeg"))
	}
	cancel()
	select {
	case err := <-done:
		if err == nil || ctx.Err() == nil {
			t.Fatalf("canceled detection returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler did not return after cancel")
	}
	for _, tool := range []string{"python3", "ffmpeg"} {
		if pids := childProcesses(tool); len(pids) > 0 {
			t.Errorf("%s processes left after cancel: %v", tool, pids)
		}
	}
}
