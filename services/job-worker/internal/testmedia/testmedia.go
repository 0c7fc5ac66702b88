// Package testmedia makes small real media files for tests with the real
// ffmpeg.
package testmedia

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// Clip writes a 3 s 320x240 25 fps h264 video with a 440 Hz aac tone to
// dir/testsrc.mp4 and returns its path.
func Clip(t testing.TB, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "testsrc.mp4")
	cmd := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
		"-f", "lavfi", "-i", "testsrc=duration=3:size=320x240:rate=25",
		"-f", "lavfi", "-i", "sine=frequency=440:duration=3",
		"-c:v", "libx264", "-c:a", "aac", "-shortest", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg test clip: %v\n%s", err, b)
	}
	return out
}
