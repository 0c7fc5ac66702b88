package testmedia

import (
	_ "embed"
	"fmt"
	"image"
	"os"
	"path/filepath"
	"testing"
)

// faceJPEG is a public-domain NASA portrait, 320x320 (see
// astronaut-face.txt for its origin and licence).
//
//go:embed astronaut-face.jpg
var faceJPEG []byte

// FaceBox is where the face is in Face's image: forehead to chin, cheek to
// cheek, marked by eye rather than by a detector, so a test checks a
// detector against the picture, not against itself.
var FaceBox = image.Rect(112, 44, 168, 116)

// Face writes the face photo to dir/face.jpg and returns its path.
func Face(t testing.TB, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "face.jpg")
	if err := os.WriteFile(out, faceJPEG, 0o600); err != nil {
		t.Fatalf("face fixture: %v", err)
	}
	return out
}

// FaceVideo's geometry: the photo scaled by 1.5 with its top left corner
// at (400, 120) of a 1280x720 frame.
const (
	faceVideoScale = 1.5
	faceVideoX     = 400
	faceVideoY     = 120
)

// FaceVideoBox is where the face is in FaceVideo's first two seconds.
var FaceVideoBox = image.Rect(
	faceVideoX+int(faceVideoScale*float64(FaceBox.Min.X)), faceVideoY+int(faceVideoScale*float64(FaceBox.Min.Y)),
	faceVideoX+int(faceVideoScale*float64(FaceBox.Max.X)), faceVideoY+int(faceVideoScale*float64(FaceBox.Max.Y)))

// FaceVideo writes dir/faces.mp4: 4 s of 1280x720 25 fps H.264, the face
// photo (at FaceVideoBox) on grey for the first 2 s, then 2 s of the
// testsrc2 pattern, which has no face.
func FaceVideo(t testing.TB, dir string) string {
	t.Helper()
	photo := Face(t, dir)
	out := filepath.Join(dir, "faces.mp4")
	ffmpeg(t, "-loop", "1", "-framerate", "25", "-t", "2", "-i", photo,
		"-f", "lavfi", "-i", "color=c=gray:s=1280x720:r=25:d=2",
		"-f", "lavfi", "-i", "testsrc2=s=1280x720:r=25:d=2",
		"-filter_complex", fmt.Sprintf("[0:v]scale=iw*%g:-1[p];[1:v][p]overlay=%d:%d,format=yuv420p[a];[2:v]format=yuv420p[b];[a][b]concat=n=2:v=1:a=0[v]",
			faceVideoScale, faceVideoX, faceVideoY),
		"-map", "[v]", "-c:v", "libx264", "-preset", "veryfast", out)
	return out
}
