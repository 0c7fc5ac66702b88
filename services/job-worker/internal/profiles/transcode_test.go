package profiles

import (
	"context"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/workersdk"
)

func TestTranscode(t *testing.T) {
	t.Parallel() // the tools are separate processes: overlap their start-up and I/O
	_, clip := fixture(t)
	for _, s := range stores(t) {
		t.Run(s.name, func(t *testing.T) {
			p := TranscodeProfile(s.res, Transcode)
			out, qty, err := run(t, p, workItem(Transcode, s.input(t, clip, "clip.mp4"), s.outputLocation(t),
				map[string]any{ParamHeight: 120, ParamVideoBitrate: 300}))
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(qty-3) > 0.2 {
				t.Errorf("verified quantity = %v, want about 3", qty)
			}
			got := s.fetch(t, out.GetLocators()[ParamOutputFile].GetUrl())
			v := ffprobeStream(t, got, "v")
			if v["codec_name"] != "h264" || v["width"] != "160" || v["height"] != "120" {
				t.Errorf("video = %v, want h264 160x120", v)
			}
			if a := ffprobeStream(t, got, "a"); a["codec_name"] != "aac" {
				t.Errorf("audio = %v, want aac", a)
			}
			if d, _ := strconv.ParseFloat(v["duration"], 64); math.Abs(d-3) > 0.2 {
				t.Errorf("duration = %v, want about 3", v["duration"])
			}
		})
	}
}

func TestTranscodeBadInput(t *testing.T) {
	dir, clip := fixture(t)
	res := &locator.Resolver{Roots: []string{dir, t.TempDir()}, MaxBytes: 1 << 20}
	p := TranscodeProfile(res, CreateProxy)
	out := "file://" + res.Roots[1]
	for name, path := range badInputs(t, res.Roots[1], clip) {
		t.Run(name, func(t *testing.T) {
			_, _, err := run(t, p, workItem(CreateProxy, "file://"+path, out, nil))
			wantProblem(t, err, workersdk.TypeInvalidInput, "inputFile")
		})
	}
	t.Run("too large", func(t *testing.T) {
		small := &locator.Resolver{Roots: res.Roots, MaxBytes: 1 << 10}
		_, _, err := run(t, TranscodeProfile(small, CreateProxy), workItem(CreateProxy, "file://"+clip, out, nil))
		wantProblem(t, err, workersdk.TypeInputTooLarge, "limit")
	})
	t.Run("no output location", func(t *testing.T) {
		_, _, err := run(t, p, workItem(CreateProxy, "file://"+clip, "", nil))
		wantProblem(t, err, workersdk.TypeInvalidInput, ParamOutputLocation)
	})
	t.Run("output outside roots", func(t *testing.T) {
		_, _, err := run(t, p, workItem(CreateProxy, "file://"+clip, "file:///etc/medius", nil))
		wantProblem(t, err, workersdk.TypeLocatorForbidden, ParamOutputLocation)
	})
	t.Run("bad parameter", func(t *testing.T) {
		_, _, err := run(t, p, workItem(CreateProxy, "file://"+clip, out, map[string]any{ParamHeight: "big"}))
		wantProblem(t, err, workersdk.TypeInvalidInput, ParamHeight)
	})
}

// Cancel mid-transcode kills ffmpeg: no tool process is left behind.
func TestTranscodeCanceled(t *testing.T) {
	dir, clip := fixture(t)
	res := &locator.Resolver{Roots: []string{dir, t.TempDir()}}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	started := make(chan struct{}, 1)
	// A 4K, slow-preset encode takes seconds: long enough to cancel midway.
	item := workItem(Transcode, "file://"+clip, "file://"+res.Roots[1], map[string]any{ParamHeight: 2160, ParamVideoBitrate: 20000})
	go func() {
		_, _, err := TranscodeProfile(res, Transcode).Handler(ctx, item, func(int) {
			select {
			case started <- struct{}{}:
			default:
			}
		})
		done <- err
	}()
	if !waitFor(20*time.Second, func() bool { return len(childProcesses("ffmpeg")) > 0 }) {
		t.Fatal("ffmpeg never started")
	}
	cancel()
	select {
	case err := <-done:
		if err == nil || ctx.Err() == nil {
			t.Fatalf("canceled transcode returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler did not return after cancel")
	}
	if pids := childProcesses("ffmpeg"); len(pids) > 0 {
		t.Errorf("ffmpeg processes left after cancel: %v", pids)
	}
}

// A single-file output goes to an http(s) output location by PUT, as to a
// signed URL.
func TestTranscodeToHTTP(t *testing.T) {
	dir, clip := fixture(t)
	got := make(chan []byte, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut || r.URL.Query().Get("sig") != "abc" {
			http.Error(w, "want a signed PUT", http.StatusForbidden)
			return
		}
		b, _ := io.ReadAll(r.Body)
		got <- b
	}))
	defer srv.Close()
	res := &locator.Resolver{Roots: []string{dir}, AllowPrivate: true}
	url := srv.URL + "/upload/proxy.mp4?sig=abc"
	out, _, err := run(t, TranscodeProfile(res, CreateProxy), workItem(CreateProxy, "file://"+clip, url, map[string]any{ParamHeight: 120}))
	if err != nil {
		t.Fatal(err)
	}
	if u := out.GetLocators()[ParamOutputFile].GetUrl(); u != url {
		t.Errorf("output locator = %q, want the PUT URL", u)
	}
	p := filepath.Join(t.TempDir(), "proxy.mp4")
	if err := os.WriteFile(p, <-got, 0o600); err != nil {
		t.Fatal(err)
	}
	if v := ffprobeStream(t, p, "v"); v["codec_name"] != "h264" || v["height"] != "120" {
		t.Errorf("uploaded proxy = %v, want h264 120 lines", v)
	}
}

// CreateProxy and ExtractTechnicalMetadata through both stores: a file root
// and a real S3 server (input read from a bucket, output written to one).
func TestProxyAndTechnicalMetadataStores(t *testing.T) {
	t.Parallel()
	_, clip := fixture(t)
	for _, s := range stores(t) {
		t.Run(s.name, func(t *testing.T) {
			in := s.input(t, clip, "clip.mp4")
			out, qty, err := run(t, TranscodeProfile(s.res, CreateProxy), workItem(CreateProxy, in, s.outputLocation(t), nil))
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(qty-3) > 0.2 {
				t.Errorf("proxy verified quantity = %v, want about 3", qty)
			}
			url := out.GetLocators()[ParamOutputFile].GetUrl()
			if !strings.HasPrefix(url, s.outputLocation(t)) {
				t.Errorf("proxy written to %s, want under %s", url, s.outputLocation(t))
			}
			if v := ffprobeStream(t, s.fetch(t, url), "v"); v["codec_name"] != "h264" {
				t.Errorf("proxy video = %v, want h264", v)
			}

			md, qty, err := run(t, TechnicalMetadata(s.res), workItem(ExtractTechnicalMetadata, in, "", nil))
			if err != nil {
				t.Fatal(err)
			}
			tm := md.GetData().GetFields()[ParamTechnicalMetadata].GetStructValue().AsMap()
			if d, _ := tm["format"].(map[string]any)["duration"].(float64); math.Abs(d-3) > 0.2 || math.Abs(qty-3) > 0.2 {
				t.Errorf("technical metadata duration %v, quantity %v, want about 3", d, qty)
			}
		})
	}
}
