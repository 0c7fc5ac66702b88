package profiles

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/pkg/testmedia"
	"github.com/medius-platform/medius/pkg/workersdk"
)

// watchedFile makes path a FIFO standing for another tenant's media: every
// time something opens it for reading it is given the bytes of src (a
// complete, streamable clip, so a tool that follows a reference to it
// really gets the media) and counted. It returns the number of opens so
// far.
func watchedFile(t *testing.T, path, src string) func() int64 {
	t.Helper()
	content, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	var opens atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			// Blocks until a reader opens the FIFO.
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				return
			}
			if stop.Load() {
				_ = f.Close()
				return
			}
			opens.Add(1)
			_, _ = f.Write(content) // EPIPE once the reader has seen enough
			_ = f.Close()
		}
	}()
	t.Cleanup(func() {
		stop.Store(true)
		// A reader of our own releases the writer's pending open; held
		// until the writer is gone so it cannot block again.
		r, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			t.Errorf("release %s: %v", path, err)
			return
		}
		wg.Wait()
		_ = r.Close()
	})
	return opens.Load
}

// streamableClip is the test clip with its index first, as Medius's own
// proxies are written: readable through a pipe.
func streamableClip(t *testing.T) string {
	t.Helper()
	_, clip := fixture(t)
	out := filepath.Join(t.TempDir(), "victim.mp4")
	if b, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", clip, "-c", "copy", "-movflags", "+faststart", out).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return out
}

// A media input that is really a playlist or list naming other files (an
// HLS playlist or an ffconcat list called clip.mp4) is refused as an
// unsupported format before ffprobe or ffmpeg opens anything it names: a
// tenant cannot read another tenant's media through it, neither a file
// outside every root nor another job's input downloaded next to its own.
func TestInputNamingOtherFilesIsRefused(t *testing.T) {
	t.Parallel()
	victim := streamableClip(t)
	outside := t.TempDir() // under no root: another tenant's directory
	for _, s := range stores(t) {
		// Where the worker opens this store's input: the list's own
		// directory, where relative names resolve.
		inputDir := filepath.Join(s.root, "in")
		if s.s3 != nil {
			inputDir = s.res.TempDir // downloads of every job land here
		}
		if err := os.MkdirAll(inputDir, 0o750); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name, format string
			list         func(other string) string
			other        string // where the named file is
		}{
			{"hls", "hls", func(other string) string {
				return "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:3.0,\n" + other + "\n#EXT-X-ENDLIST\n"
			}, filepath.Join(outside, s.name+"-secret.mp4")},
			// The concat demuxer's safe mode refuses absolute and ".."
			// names, not a sibling's.
			{"ffconcat", "concat", func(other string) string {
				return "ffconcat version 1.0\nfile " + filepath.Base(other) + "\n"
			}, filepath.Join(inputDir, "medius-input-other-"+s.name+".mp4")},
		} {
			t.Run(s.name+"/"+c.name, func(t *testing.T) {
				opens := watchedFile(t, c.other, victim)
				src := filepath.Join(t.TempDir(), "clip.mp4")
				if err := os.WriteFile(src, []byte(c.list(c.other)), 0o600); err != nil {
					t.Fatal(err)
				}
				in := s.input(t, src, c.name+"-clip.mp4")
				outDir := filepath.Join(s.root, "out", strings.ReplaceAll(t.Name(), "/", "-"))
				for _, p := range []workersdk.Profile{TechnicalMetadata(s.res), TranscodeProfile(s.res, CreateProxy)} {
					// Bounded: a tool that follows the list may wait on the FIFO.
					ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
					out, _, err := p.Handler(ctx, workItem(p.Spec.GetName(), in, "file://"+outDir, nil), func(int) {})
					cancel()
					var pe *problem.Error
					if !errors.As(err, &pe) || pe.Type != workersdk.TypeInvalidInput || pe.Field != workersdk.LocatorField(ParamInputFile) ||
						!strings.Contains(pe.Detail, "input format not supported: "+c.format) {
						t.Errorf("%s: err = %v (output %v), want invalid-input on inputFile: input format not supported: %s", p.Spec.GetName(), err, out, c.format)
					}
				}
				if n := opens(); n != 0 {
					t.Errorf("the file the list names was opened %d times", n)
				}
				if entries, _ := os.ReadDir(outDir); len(entries) != 0 {
					t.Errorf("output written: %v", entries)
				}
			})
		}
	}
}

// The usual containers and still images are read; other formats whose
// demuxer opens what the file names are refused too, with the format named.
func TestProbeFormats(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	gen := func(name string, args ...string) string {
		p := filepath.Join(dir, name)
		full := append([]string{"-hide_banner", "-loglevel", "error", "-y",
			"-f", "lavfi", "-i", "testsrc=duration=0.5:size=64x48:rate=25", "-f", "lavfi", "-i", "sine=duration=0.5"}, args...)
		if b, err := exec.Command("ffmpeg", append(full, p)...).CombinedOutput(); err != nil {
			t.Fatalf("fixture %s: %v: %s", name, err, b)
		}
		return p
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Run("accepted", func(t *testing.T) {
		for _, c := range []struct{ path, format string }{
			{gen("a.mp4", "-c:v", "libx264", "-c:a", "aac"), "mov,mp4"},
			{gen("a.mov", "-c:v", "libx264", "-c:a", "pcm_s16le"), "mov,mp4"},
			{gen("a.mxf", "-c:v", "mpeg2video", "-c:a", "pcm_s16le", "-ar", "48000"), "mxf"},
			{gen("a.ts", "-c:v", "libx264", "-c:a", "aac"), "mpegts"},
			{gen("a.mpg", "-c:v", "mpeg2video", "-c:a", "mp2", "-f", "vob"), "mpeg"},
			{gen("a.mkv", "-c:v", "libx264", "-c:a", "flac"), "matroska"},
			{gen("a.avi", "-c:v", "mpeg4", "-c:a", "pcm_s16le"), "avi"},
			{gen("a.wav", "-vn"), "wav"},
			{gen("a.flac", "-vn"), "flac"},
			{gen("a.aac", "-vn", "-c:a", "aac"), "aac"},
			{gen("a.h264", "-an", "-c:v", "libx264"), "h264"},
			{gen("a.png", "-an", "-frames:v", "1"), "png_pipe"},
			{gen("a.jpg", "-an", "-frames:v", "1"), "jpeg_pipe"},
			// A photo whose EXIF data hides its signature from the probe:
			// known by its extension only.
			{testmedia.Face(t, dir), "image2"},
		} {
			t.Run(filepath.Base(c.path), func(t *testing.T) {
				meta, _, err := Probe(t.Context(), c.path)
				if err != nil {
					t.Fatal(err)
				}
				if got := meta.AsMap()["format"].(map[string]any)["formatName"].(string); !strings.HasPrefix(got, c.format) {
					t.Errorf("formatName = %q, want %s", got, c.format)
				}
			})
		}
	})
	t.Run("image named like a sequence", func(t *testing.T) {
		// image2 would read frame001.png... for frame%03d.png: the job's
		// own file is read, not the sequence.
		gen("frame001.png", "-an", "-frames:v", "1")
		own := filepath.Join(dir, "frame%03d.png")
		if b, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=32x24",
			"-frames:v", "1", "-f", "image2", "-update", "1", own).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, b)
		}
		meta, _, err := Probe(t.Context(), own)
		if err != nil {
			t.Fatal(err)
		}
		s := meta.AsMap()["streams"].([]any)
		if v := s[0].(map[string]any); len(s) != 1 || v["width"] != 32.0 || v["height"] != 24.0 {
			t.Errorf("streams = %v, want the one 32x24 picture of the file itself", s)
		}
	})
	t.Run("refused", func(t *testing.T) {
		other := gen("other.mp4", "-c:v", "libx264", "-c:a", "aac")
		for _, c := range []struct{ path, format string }{
			{write("manifest.mp4", `<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011"><Period><AdaptationSet mimeType="video/mp4"><Representation id="1" bandwidth="1000"><BaseURL>`+other+`</BaseURL></Representation></AdaptationSet></Period></MPD>`), "dash"},
			{write("session.mp4", "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 5004 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"), "sdp"},
			// image2 would read plane.u and plane.v beside it.
			{write("plane.y", strings.Repeat("\x10", 64)), "image2"},
		} {
			t.Run(c.format, func(t *testing.T) {
				_, _, err := Probe(t.Context(), c.path)
				wantProblem(t, err, workersdk.TypeInvalidInput, "input format not supported: "+c.format)
			})
		}
	})
}

// Every name in inputFormats is a demuxer of the ffmpeg installed: a
// misspelt one would refuse that format's files.
func TestInputFormatsAreDemuxers(t *testing.T) {
	out, err := exec.Command(FFmpeg, "-hide_banner", "-demuxers").Output()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && strings.HasPrefix(f[0], "D") {
			for _, n := range strings.Split(f[1], ",") {
				have[n] = true
			}
		}
	}
	for _, n := range strings.Split(inputFormats, ",") {
		if !have[n] {
			t.Errorf("%q is not a demuxer of this ffmpeg", n)
		}
	}
}
