package locator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// setup is a root with a file, a subdirectory, a symlink inside the root and
// one pointing out of it, and a secret file outside the root.
type setup struct {
	root, outside string
	r             *Resolver
}

func newSetup(t *testing.T) setup {
	t.Helper()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{root, filepath.Join(root, "sub"), outside} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(root, "media.mp4"), "media")
	write(t, filepath.Join(root, "sub", "clip.wav"), "clip")
	write(t, filepath.Join(outside, "secret.txt"), "secret")
	must(t, os.Symlink(filepath.Join(root, "media.mp4"), filepath.Join(root, "link-in.mp4")))
	must(t, os.Symlink(filepath.Join(outside, "secret.txt"), filepath.Join(root, "link-out.txt")))
	must(t, os.Symlink(outside, filepath.Join(root, "dir-out")))
	return setup{root: root, outside: outside, r: &Resolver{Roots: []string{root}, TempDir: t.TempDir()}}
}

func write(t *testing.T, p, s string) {
	t.Helper()
	must(t, os.WriteFile(p, []byte(s), 0o640))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func fileURL(p string) string { return "file://" + filepath.ToSlash(p) }

func TestParse(t *testing.T) {
	tests := []struct {
		url  string
		want error
	}{
		{"file:///data/a.mp4", nil},
		{"file://localhost/data/a.mp4", nil},
		{"FILE:///data/a.mp4", nil},
		{"https://example.com/a.mp4?sig=x", nil},
		{"s3://bucket/key.mp4", nil},
		{"", ErrInvalid},
		{"data/a.mp4", ErrInvalid},
		{"file://data/a.mp4", ErrInvalid},
		{"file:relative", ErrInvalid},
		{"http:///nohost", ErrInvalid},
		{"https://user:pw@example.com/a", ErrInvalid},
		{"s3://bucket", ErrInvalid},
		{"ftp://example.com/a", ErrUnsupportedScheme},
		{"gopher://x/y", ErrUnsupportedScheme},
		{"http://[::1", ErrInvalid},
	}
	for _, tt := range tests {
		_, err := Parse(tt.url)
		if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
			t.Errorf("Parse(%q) = %v, want %v", tt.url, err, tt.want)
		}
	}
}

func TestOpenFile(t *testing.T) {
	s := newSetup(t)
	tests := []struct {
		name     string
		url      string
		want     error
		wantPath string
		msg      string // part of the error text
	}{
		{name: "file in root", url: fileURL(filepath.Join(s.root, "media.mp4")), wantPath: filepath.Join(s.root, "media.mp4")},
		{name: "file in subdir", url: fileURL(filepath.Join(s.root, "sub", "clip.wav")), wantPath: filepath.Join(s.root, "sub", "clip.wav")},
		{name: "localhost host", url: "file://localhost" + filepath.ToSlash(filepath.Join(s.root, "media.mp4")), wantPath: filepath.Join(s.root, "media.mp4")},
		{name: "percent-encoded name", url: fileURL(s.root) + "/me%64ia.mp4", wantPath: filepath.Join(s.root, "media.mp4")},
		{name: "symlink inside root", url: fileURL(filepath.Join(s.root, "link-in.mp4")), wantPath: filepath.Join(s.root, "media.mp4")},
		{name: "dotdot escape", url: fileURL(s.root) + "/../outside/secret.txt", want: ErrForbidden, msg: `".."`},
		{name: "dotdot staying inside", url: fileURL(s.root) + "/sub/../media.mp4", want: ErrForbidden, msg: `".."`},
		{name: "encoded dotdot", url: fileURL(s.root) + "/%2e%2e/outside/secret.txt", want: ErrForbidden, msg: `".."`},
		{name: "absolute outside", url: fileURL(filepath.Join(s.outside, "secret.txt")), want: ErrForbidden, msg: "outside the allowed roots"},
		{name: "etc passwd", url: "file:///etc/passwd", want: ErrForbidden, msg: "outside the allowed roots"},
		{name: "root prefix is not a parent", url: fileURL(s.root + "-other/x"), want: ErrForbidden, msg: "outside the allowed roots"},
		{name: "symlink out of root", url: fileURL(filepath.Join(s.root, "link-out.txt")), want: ErrForbidden, msg: "symlink"},
		{name: "dir symlink out of root", url: fileURL(filepath.Join(s.root, "dir-out", "secret.txt")), want: ErrForbidden, msg: "symlink"},
		{name: "missing file", url: fileURL(filepath.Join(s.root, "nope.mp4")), want: ErrNotFound, msg: "does not exist"},
		{name: "directory", url: fileURL(filepath.Join(s.root, "sub")), want: ErrInvalid, msg: "not a regular file"},
		{name: "s3 later", url: "s3://bucket/key", want: ErrUnsupportedScheme},
		{name: "ftp", url: "ftp://host/x", want: ErrUnsupportedScheme},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, cleanup, err := s.r.Open(t.Context(), tt.url)
			if cleanup == nil {
				t.Fatal("cleanup is nil")
			}
			defer cleanup()
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("Open(%q) err = %v, want %v", tt.url, err, tt.want)
				}
				if !strings.Contains(err.Error(), tt.msg) {
					t.Errorf("error %q does not mention %q", err, tt.msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open(%q): %v", tt.url, err)
			}
			want, _ := filepath.EvalSymlinks(tt.wantPath)
			if p != want {
				t.Errorf("path = %q, want %q", p, want)
			}
		})
	}
}

func TestNoRoots(t *testing.T) {
	s := newSetup(t)
	r := &Resolver{}
	_, _, err := r.Open(t.Context(), fileURL(filepath.Join(s.root, "media.mp4")))
	if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "no file roots") {
		t.Fatalf("err = %v, want forbidden naming missing roots", err)
	}
}

func TestFileTooLarge(t *testing.T) {
	s := newSetup(t)
	s.r.MaxBytes = 3
	_, _, err := s.r.Open(t.Context(), fileURL(filepath.Join(s.root, "media.mp4")))
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
}

func TestPutFile(t *testing.T) {
	s := newSetup(t)
	src := filepath.Join(t.TempDir(), "out.json")
	write(t, src, `{"ok":true}`)

	dst := filepath.Join(s.root, "out", "deep", "result.json")
	must(t, s.r.Put(t.Context(), fileURL(dst), src))
	got, err := os.ReadFile(dst)
	must(t, err)
	if string(got) != `{"ok":true}` {
		t.Fatalf("output = %q", got)
	}
	// No temporary files are left next to the output.
	entries, _ := os.ReadDir(filepath.Dir(dst))
	if len(entries) != 1 {
		t.Errorf("output dir has %d entries, want 1", len(entries))
	}

	for _, tt := range []struct {
		name, url string
		want      error
	}{
		{"outside", fileURL(filepath.Join(s.outside, "x.json")), ErrForbidden},
		{"dotdot", fileURL(s.root) + "/../outside/x.json", ErrForbidden},
		{"through dir symlink", fileURL(filepath.Join(s.root, "dir-out", "new", "x.json")), ErrForbidden},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.r.Put(t.Context(), tt.url, src); !errors.Is(err, tt.want) {
				t.Fatalf("Put(%q) = %v, want %v", tt.url, err, tt.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(s.outside, "new")); err == nil {
		t.Error("Put created a directory outside the root")
	}
}

func TestPutFileReplacesSymlink(t *testing.T) {
	s := newSetup(t)
	src := filepath.Join(t.TempDir(), "out.txt")
	write(t, src, "new")
	// Writing to link-out.txt must replace the link, not the secret it
	// points to.
	must(t, s.r.Put(t.Context(), fileURL(filepath.Join(s.root, "link-out.txt")), src))
	secret, _ := os.ReadFile(filepath.Join(s.outside, "secret.txt"))
	if string(secret) != "secret" {
		t.Fatalf("file outside the root was overwritten: %q", secret)
	}
}

// httpSetup serves /media.mp4 (1 KiB), /missing (404), /private (403),
// /redirect (-> /media.mp4), /big (declared 1 MiB), /chunked (unsized 64 KiB),
// /stall (sends headers, then nothing), /upload (PUT sink).
type httpSetup struct {
	srv      *httptest.Server
	uploaded chan []byte
}

func newHTTP(t *testing.T) httpSetup {
	t.Helper()
	h := httpSetup{uploaded: make(chan []byte, 1)}
	body := bytes.Repeat([]byte("m"), 1024)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /media.mp4", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) })
	mux.HandleFunc("GET /missing", func(w http.ResponseWriter, _ *http.Request) { http.NotFound(w, nil) })
	mux.HandleFunc("GET /private", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusForbidden) })
	mux.HandleFunc("GET /error", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	mux.HandleFunc("GET /redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/media.mp4", http.StatusFound) })
	mux.HandleFunc("GET /big", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(1<<20))
		_, _ = w.Write(bytes.Repeat([]byte("b"), 1<<20))
	})
	mux.HandleFunc("GET /chunked", func(w http.ResponseWriter, _ *http.Request) {
		for range 64 {
			_, _ = w.Write(bytes.Repeat([]byte("c"), 1024))
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("GET /stall", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		_, _ = w.Write([]byte("x"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	mux.HandleFunc("PUT /upload", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		h.uploaded <- b
		w.WriteHeader(http.StatusCreated)
	})
	h.srv = httptest.NewServer(mux)
	t.Cleanup(h.srv.Close)
	return h
}

func TestOpenHTTP(t *testing.T) {
	h := newHTTP(t)
	tests := []struct {
		name     string
		path     string
		r        *Resolver
		want     error
		wantSize int64
		msg      string
	}{
		{name: "ok", path: "/media.mp4", r: &Resolver{AllowPrivate: true}, wantSize: 1024},
		{name: "redirect", path: "/redirect", r: &Resolver{AllowPrivate: true}, wantSize: 1024},
		{name: "unsized body", path: "/chunked", r: &Resolver{AllowPrivate: true}, wantSize: 64 << 10},
		{name: "404", path: "/missing", r: &Resolver{AllowPrivate: true}, want: ErrNotFound, msg: "404"},
		{name: "403", path: "/private", r: &Resolver{AllowPrivate: true}, want: ErrForbidden, msg: "403"},
		{name: "502", path: "/error", r: &Resolver{AllowPrivate: true}, want: ErrUnavailable, msg: "502"},
		{name: "loopback refused", path: "/media.mp4", r: &Resolver{}, want: ErrForbidden, msg: "loopback"},
		{name: "declared too large", path: "/big", r: &Resolver{AllowPrivate: true, MaxBytes: 1000}, want: ErrTooLarge},
		{name: "streamed too large", path: "/chunked", r: &Resolver{AllowPrivate: true, MaxBytes: 10 << 10}, want: ErrTooLarge},
		{name: "stalled", path: "/stall", r: &Resolver{AllowPrivate: true, StallTimeout: 200 * time.Millisecond}, want: ErrUnavailable, msg: "stall"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := t.TempDir()
			tt.r.TempDir = tmp
			p, cleanup, err := tt.r.Open(t.Context(), h.srv.URL+tt.path+"?sig=secret")
			if tt.want != nil {
				cleanup()
				if !errors.Is(err, tt.want) {
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
				if !strings.Contains(err.Error(), tt.msg) {
					t.Errorf("error %q does not mention %q", err, tt.msg)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error %q leaks the query string", err)
				}
				if left, _ := os.ReadDir(tmp); len(left) != 0 {
					t.Errorf("temp files left behind: %v", left)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(p)
			must(t, err)
			if fi.Size() != tt.wantSize {
				t.Errorf("size = %d, want %d", fi.Size(), tt.wantSize)
			}
			cleanup()
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cleanup left %s", p)
			}
		})
	}
}

// TestPolicyAtDialTime uses a host name that resolves to loopback: the
// pre-flight literal check cannot see it, the dialer's check must.
func TestPolicyAtDialTime(t *testing.T) {
	h := newHTTP(t)
	_, port, _ := net.SplitHostPort(h.srv.Listener.Addr().String())
	r := &Resolver{TempDir: t.TempDir()}
	_, cleanup, err := r.Open(t.Context(), "http://localhost:"+port+"/media.mp4")
	cleanup()
	if !errors.Is(err, ErrForbidden) {
		t.Fatalf("err = %v, want ErrForbidden", err)
	}
}

func TestCanceled(t *testing.T) {
	h := newHTTP(t)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	r := &Resolver{AllowPrivate: true, TempDir: t.TempDir()}
	_, cleanup, err := r.Open(ctx, h.srv.URL+"/stall")
	cleanup()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestPutHTTP(t *testing.T) {
	h := newHTTP(t)
	src := filepath.Join(t.TempDir(), "out.bin")
	write(t, src, "payload")

	r := &Resolver{AllowPrivate: true}
	must(t, r.Put(t.Context(), h.srv.URL+"/upload", src))
	if got := <-h.uploaded; string(got) != "payload" {
		t.Errorf("uploaded %q", got)
	}
	strict := &Resolver{}
	if err := strict.Put(t.Context(), h.srv.URL+"/upload", src); !errors.Is(err, ErrForbidden) {
		t.Errorf("Put to loopback without AllowPrivate = %v, want ErrForbidden", err)
	}
	if err := r.Put(t.Context(), h.srv.URL+"/missing", src); !errors.Is(err, ErrUnavailable) {
		// The mux answers 405 for PUT on a GET route.
		t.Errorf("Put to a GET-only route = %v, want ErrUnavailable", err)
	}
}

func TestAddrPolicy(t *testing.T) {
	tests := map[string]bool{ // address -> allowed
		"127.0.0.1":        false,
		"127.8.9.10":       false,
		"::1":              false,
		"::ffff:127.0.0.1": false,
		"10.1.2.3":         false,
		"172.16.0.1":       false,
		"192.168.1.1":      false,
		"169.254.169.254":  false,
		"fe80::1":          false,
		"fd00::1":          false,
		"0.0.0.0":          false,
		"::":               false,
		"100.64.0.1":       false,
		"224.0.0.1":        false,
		"8.8.8.8":          true,
		"2001:4860::8888":  true,
		"93.184.216.34":    true,
	}
	for addr, allowed := range tests {
		got := InternalAddr(netip.MustParseAddr(addr)) == ""
		if got != allowed {
			t.Errorf("%s allowed = %v, want %v", addr, got, allowed)
		}
	}
}

func TestCheck(t *testing.T) {
	s := newSetup(t)
	for url, want := range map[string]error{
		fileURL(filepath.Join(s.root, "media.mp4")): nil,
		fileURL(filepath.Join(s.root, "later.mp4")): nil, // outputs need not exist
		fileURL(filepath.Join(s.outside, "x.mp4")):  ErrForbidden,
		"http://10.0.0.1/x":                         ErrForbidden,
		"http://[::1]:8080/x":                       ErrForbidden,
		"https://media.example.com/x.mp4":           nil,
		"s3://bucket/key":                           ErrUnsupportedScheme,
	} {
		err := s.r.Check(url)
		if (want == nil && err != nil) || !errors.Is(err, want) {
			t.Errorf("Check(%q) = %v, want %v", url, err, want)
		}
	}
}

func TestRedact(t *testing.T) {
	got := Redact("https://user:pw@example.com/a.mp4?X-Amz-Signature=abc#frag")
	if strings.Contains(got, "pw") || strings.Contains(got, "abc") || strings.Contains(got, "frag") {
		t.Fatalf("Redact leaked: %s", got)
	}
}

// TestRootBehindSymlink: a root configured through a symlink (as /tmp or /var
// are on some systems) still accepts its files, requested by either path.
func TestRootBehindSymlink(t *testing.T) {
	s := newSetup(t)
	alias := filepath.Join(t.TempDir(), "alias")
	must(t, os.Symlink(s.root, alias))
	r := &Resolver{Roots: []string{alias}}
	for _, p := range []string{filepath.Join(alias, "media.mp4"), filepath.Join(s.root, "media.mp4")} {
		got, cleanup, err := r.Open(t.Context(), fileURL(p))
		cleanup()
		if err != nil {
			t.Fatalf("Open(%s): %v", p, err)
		}
		if want, _ := filepath.EvalSymlinks(filepath.Join(s.root, "media.mp4")); got != want {
			t.Errorf("path = %s, want %s", got, want)
		}
	}
	if _, cleanup, err := r.Open(t.Context(), fileURL(filepath.Join(alias, "link-out.txt"))); !errors.Is(err, ErrForbidden) {
		cleanup()
		t.Fatalf("symlink out of an aliased root: err = %v, want ErrForbidden", err)
	}
}
