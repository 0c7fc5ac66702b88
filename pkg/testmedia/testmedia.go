// Package testmedia makes small real media files for tests with the real
// ffmpeg and espeak-ng, and measures what tests measure of media work (word
// error rate). Tests of the workers and of the services end to end share it.
package testmedia

import (
	"fmt"
	"math"
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

func ffmpeg(t testing.TB, args ...string) {
	t.Helper()
	cmd := exec.Command("ffmpeg", append([]string{"-hide_banner", "-loglevel", "error", "-y"}, args...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg %v: %v\n%s", args, err, b)
	}
}

// Tone writes a 4 s mono 48 kHz 1 kHz sine whose EBU R128 integrated
// loudness is lufs (a 1 kHz sine on one channel measures its peak level in
// dBFS minus 3.01 LU) to dir/tone.wav and returns its path.
func Tone(t testing.TB, dir string, lufs float64) string {
	t.Helper()
	out := filepath.Join(dir, "tone.wav")
	// amplitude 10^((lufs+3.01)/20) of full scale
	ffmpeg(t, "-f", "lavfi", "-i", fmt.Sprintf("aevalsrc=%.6f*sin(2*PI*1000*t):s=48000:d=4", math.Pow(10, (lufs+3.0103)/20)),
		"-c:a", "pcm_s24le", out)
	return out
}

// Scenes writes dir/scenes.mp4: three 1.2 s shots of different test
// patterns at 25 fps, so the cuts are at 1.2 s and 2.4 s; total 3.6 s.
func Scenes(t testing.TB, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "scenes.mp4")
	ffmpeg(t, "-f", "lavfi", "-i", "testsrc=d=1.2:s=320x240:r=25",
		"-f", "lavfi", "-i", "smptebars=d=1.2:s=320x240:r=25",
		"-f", "lavfi", "-i", "mandelbrot=s=320x240:r=25,trim=duration=1.2",
		"-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1:a=0,format=yuv420p[v]", "-map", "[v]",
		"-c:v", "libx264", "-preset", "veryfast", out)
	return out
}

// Caption is one text drawn on a stretch of Captions' video.
type Caption struct {
	Text       string
	Start, End float64
}

// Captions writes dir/captions.mp4: 4 s of 640x240 white video at 5 fps with
// the captions drawn in black (DejaVu Sans from fontconfig).
func Captions(t testing.TB, dir string, caps []Caption) string {
	t.Helper()
	out := filepath.Join(dir, "captions.mp4")
	vf := "color=c=white:s=640x240:d=4:r=5"
	for _, c := range caps {
		vf += fmt.Sprintf(",drawtext=text='%s':fontsize=56:fontcolor=black:x=30:y=90:enable='between(t,%g,%g)'", c.Text, c.Start, c.End)
	}
	ffmpeg(t, "-f", "lavfi", "-i", vf, "-c:v", "libx264", "-pix_fmt", "yuv420p", out)
	return out
}

// Speech writes dir/speech.wav: the sentences spoken by espeak-ng (Klatt
// voice, 120 words a minute) at 16 kHz, after 0.5 s of silence and with
// 1 s of silence after each.
func Speech(t testing.TB, dir string, sentences ...string) string {
	t.Helper()
	var args []string
	filter := ""
	for i, s := range sentences {
		p := filepath.Join(dir, fmt.Sprintf("sentence%d.wav", i))
		if b, err := exec.Command("espeak-ng", "-v", "en-us+klatt4", "-s", "120", "-w", p, s).CombinedOutput(); err != nil {
			t.Fatalf("espeak-ng: %v\n%s", err, b)
		}
		args = append(args, "-i", p)
		filter += fmt.Sprintf("[%d:a]aresample=16000,apad=pad_dur=1[s%d];", i+1, i)
	}
	filter += "[0:a]"
	for i := range sentences {
		filter += fmt.Sprintf("[s%d]", i)
	}
	filter += fmt.Sprintf("concat=n=%d:v=0:a=1[out]", len(sentences)+1)
	out := filepath.Join(dir, "speech.wav")
	ffmpeg(t, append(append([]string{"-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=0.5"}, args...),
		"-filter_complex", filter, "-map", "[out]", "-ac", "1", "-c:a", "pcm_s16le", out)...)
	return out
}

// WER is the word error rate of hyp against ref: the word-level
// Levenshtein distance over the reference's length.
func WER(ref, hyp []string) float64 {
	d := make([]int, len(hyp)+1)
	for j := range d {
		d[j] = j
	}
	for i := 1; i <= len(ref); i++ {
		prev := d[0]
		d[0] = i
		for j := 1; j <= len(hyp); j++ {
			cur := d[j]
			cost := 1
			if ref[i-1] == hyp[j-1] {
				cost = 0
			}
			d[j] = min(d[j]+1, d[j-1]+1, prev+cost)
			prev = cur
		}
	}
	return float64(d[len(hyp)]) / float64(len(ref))
}
