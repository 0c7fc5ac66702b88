package profiles

import (
	"fmt"
	"image"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/testmedia"
)

// BenchmarkDetectFaces is the speed on the common 10 s 720p clip, one frame
// a second (the default).
func BenchmarkDetectFaces(b *testing.B) {
	res, _, clip := benchSetup(b)
	benchProfile(b, FacesProfile(res, DefaultFaceEngine()), "file://"+clip, "", nil, benchSeconds)
}

// faceShot is one second of the accuracy clip: the face photo scaled by
// scale with its top left corner at (x, y) over the background bg.
type faceShot struct {
	bg       string
	scale    float64
	x, y     int
	faceFree bool
}

// accuracyShots show the face from 43 to 216 px tall (0.06 to 0.3 of the
// height) over flat and busy backgrounds, then four seconds of patterns
// without a face.
var accuracyShots = []faceShot{
	{bg: "color=c=gray", scale: 0.6, x: 100, y: 400},
	{bg: "testsrc2", scale: 1, x: 700, y: 100},
	{bg: "color=c=0x203040", scale: 1.8, x: 300, y: -40},
	{bg: "smptebars", scale: 3, x: 200, y: -100},
	{bg: "testsrc2", faceFree: true}, {bg: "testsrc2", faceFree: true},
	{bg: "mandelbrot", faceFree: true}, {bg: "smptebars", faceFree: true},
}

// accuracyClip writes the accuracy clip: 8 s of 1280x720 25 fps H.264 with
// film-grain noise, and returns the face's box in each second (empty when
// none).
func accuracyClip(b *testing.B, dir string) (string, []image.Rectangle) {
	b.Helper()
	photo := testmedia.Face(b, dir)
	args := []string{"-hide_banner", "-loglevel", "error", "-y", "-loop", "1", "-framerate", "25", "-t", "1", "-i", photo}
	var graph, concat []string
	var truth []image.Rectangle
	for i, s := range accuracyShots {
		src := s.bg + "=s=1280x720:r=25"
		if strings.Contains(s.bg, "=") {
			src = s.bg + ":s=1280x720:r=25"
		}
		args = append(args, "-f", "lavfi", "-i", src+",trim=duration=1")
		if s.faceFree {
			graph = append(graph, fmt.Sprintf("[%d:v]format=yuv420p[s%d]", i+1, i))
			truth = append(truth, image.Rectangle{})
		} else {
			graph = append(graph, fmt.Sprintf("[p%d]scale=iw*%g:-1[q%d];[%d:v][q%d]overlay=%d:%d,format=yuv420p[s%d]", i, s.scale, i, i+1, i, s.x, s.y, i))
			f := testmedia.FaceBox
			truth = append(truth, image.Rect(s.x+int(s.scale*float64(f.Min.X)), s.y+int(s.scale*float64(f.Min.Y)),
				s.x+int(s.scale*float64(f.Max.X)), s.y+int(s.scale*float64(f.Max.Y))))
		}
		concat = append(concat, fmt.Sprintf("[s%d]", i))
	}
	faces := 0
	for _, s := range accuracyShots {
		if !s.faceFree {
			faces++
		}
	}
	split := fmt.Sprintf("[0:v]split=%d", faces)
	for i := range faces {
		split += fmt.Sprintf("[p%d]", i)
	}
	graph = append([]string{split}, graph...)
	graph = append(graph, strings.Join(concat, "")+fmt.Sprintf("concat=n=%d:v=1:a=0,noise=alls=10:allf=t,format=yuv420p[v]", len(accuracyShots)))
	out := filepath.Join(dir, "accuracy.mp4")
	args = append(args, "-filter_complex", strings.Join(graph, ";"), "-map", "[v]", "-c:v", "libx264", "-preset", "veryfast", out)
	if o, err := exec.Command("ffmpeg", args...).CombinedOutput(); err != nil {
		b.Fatalf("accuracy clip: %v\n%s", err, o)
	}
	return out, truth
}

// BenchmarkDetectFacesAccuracy reports, on the accuracy clip sampled 4
// times a second, the share of face frames whose face is found (recall),
// the boxes that are no face per frame (false), the mean IoU of found
// faces, and x-realtime.
func BenchmarkDetectFacesAccuracy(b *testing.B) {
	dir := b.TempDir()
	clip, truth := accuracyClip(b, dir)
	const interval = 0.25
	item := workItem(DetectFaces, "file://"+clip, "", map[string]any{ParamInterval: interval})
	p := FacesProfile(&locator.Resolver{Roots: []string{dir}}, DefaultFaceEngine())
	var recall, falsePerFrame, meanIoU float64
	for b.Loop() {
		out, _, err := p.Handler(b.Context(), item, func(int) {})
		if err != nil {
			b.Fatal(err)
		}
		frames := int(float64(len(truth)) / interval)
		found := map[int]bool{}
		falses, ious := 0, 0.0
		for _, v := range out.GetData().GetFields()[ParamFaces].GetListValue().AsSlice() {
			m := v.(map[string]any)
			bx := m["box"].(map[string]any)
			x, y := int(bx["x"].(float64)), int(bx["y"].(float64))
			box := image.Rect(x, y, x+int(bx["width"].(float64)), y+int(bx["height"].(float64)))
			frame := int(m["time"].(float64)/interval + 0.5)
			want := truth[int(m["time"].(float64))]
			if v := iou(box, want); !want.Empty() && v >= 0.5 && !found[frame] {
				found[frame] = true
				ious += v
			} else {
				falses++
			}
		}
		faceFrames := 0
		for _, r := range truth {
			if !r.Empty() {
				faceFrames += int(1 / interval)
			}
		}
		recall = float64(len(found)) / float64(faceFrames)
		falsePerFrame = float64(falses) / float64(frames)
		meanIoU = ious / float64(max(len(found), 1))
	}
	b.ReportMetric(recall, "recall")
	b.ReportMetric(falsePerFrame, "false/frame")
	b.ReportMetric(meanIoU, "IoU")
	b.ReportMetric(float64(len(truth))*float64(b.N)/b.Elapsed().Seconds(), "x-realtime")
}
