package locator_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/locator/s3test"
)

// TestS3 runs against a real S3 server (versitygw).
func TestS3(t *testing.T) {
	srv := s3test.Start(t)
	srv.CreateBucket(t, "media")
	srv.Put(t, "media", "in/clip.wav", []byte("clip bytes"))
	r := &locator.Resolver{S3: srv.Config(), TempDir: t.TempDir(), MaxBytes: 1 << 10}

	p, cleanup, err := r.Open(t.Context(), "s3://media/in/clip.wav")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "clip bytes" || filepath.Ext(p) != ".wav" {
		t.Errorf("opened %s = %q, want the object with its extension", p, b)
	}
	cleanup()
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cleanup left %s", p)
	}

	src := filepath.Join(t.TempDir(), "out.json")
	if err := os.WriteFile(src, []byte(`{"ok":true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := locator.Join("s3://media/results/", "out.json")
	if err != nil || out != "s3://media/results/out.json" {
		t.Fatalf("Join = %q, %v", out, err)
	}
	if err := r.Put(t.Context(), out, src); err != nil {
		t.Fatal(err)
	}
	if got := srv.Get(t, "media", "results/out.json"); string(got) != `{"ok":true}` {
		t.Errorf("stored %q", got)
	}

	srv.Put(t, "media", "big.bin", []byte(strings.Repeat("x", 2<<10)))
	for _, tt := range []struct {
		url  string
		want error
	}{
		{"s3://media/missing.wav", locator.ErrNotFound},
		{"s3://no-such-bucket/x.wav", locator.ErrNotFound},
		{"s3://media/big.bin", locator.ErrTooLarge},
	} {
		_, cleanup, err := r.Open(t.Context(), tt.url)
		cleanup()
		if !errors.Is(err, tt.want) {
			t.Errorf("Open(%s) = %v, want %v", tt.url, err, tt.want)
		}
	}

	bad := &locator.Resolver{S3: &locator.S3Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: "wrong"}}
	if _, cleanup, err := bad.Open(t.Context(), "s3://media/in/clip.wav"); !errors.Is(err, locator.ErrForbidden) {
		t.Errorf("wrong secret: %v, want ErrForbidden", err)
	} else {
		cleanup()
	}
	none := &locator.Resolver{}
	if err := none.Check("s3://media/in/clip.wav"); !errors.Is(err, locator.ErrUnsupportedScheme) {
		t.Errorf("no S3 configured: %v, want ErrUnsupportedScheme", err)
	}
}

func TestJoin(t *testing.T) {
	if got, err := locator.Join("file:///data/out", "a.mp4"); err != nil || got != "file:///data/out/a.mp4" {
		t.Errorf("Join file = %q, %v", got, err)
	}
	for _, name := range []string{"", "..", "a/b", `a\b`} {
		if _, err := locator.Join("file:///data/out", name); !errors.Is(err, locator.ErrInvalid) {
			t.Errorf("Join name %q: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := locator.Join("https://store.example/put?sig=1", "a.mp4"); !errors.Is(err, locator.ErrInvalid) {
		t.Errorf("Join http: %v, want ErrInvalid", err)
	}
}
