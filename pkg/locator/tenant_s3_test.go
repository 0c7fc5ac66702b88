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

// On a real S3 store (versitygw), a job's tenant roots confine its s3://
// locators, whatever field of the job names them: the bucket exactly, the
// key under the prefix. Refused reads and writes never reach the store.
func TestTenantRootsS3(t *testing.T) {
	srv := s3test.Start(t)
	srv.CreateBucket(t, "shared")
	srv.Put(t, "shared", "acme/clip.wav", []byte("acme"))
	srv.Put(t, "shared", "beta/clip.wav", []byte("beta"))
	r := &locator.Resolver{S3: srv.Config(), TempDir: t.TempDir()}
	ctx := locator.WithTenantRoots(t.Context(), []string{"s3://shared/acme/"})
	src := filepath.Join(t.TempDir(), "out.json")
	if err := os.WriteFile(src, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}

	_, cleanup, err := r.Open(ctx, "s3://shared/acme/clip.wav")
	if err != nil {
		t.Fatal(err)
	}
	cleanup()
	if err := r.Put(ctx, "s3://shared/acme/out.json", src); err != nil {
		t.Fatal(err)
	}

	for _, u := range []string{"s3://shared/beta/clip.wav", "s3://shared/acme/../beta/clip.wav", "s3://shared/acme2/clip.wav"} {
		_, cleanup, err := r.Open(ctx, u)
		cleanup()
		if !errors.Is(err, locator.ErrForbidden) || !strings.Contains(err.Error(), "outside the tenant's locator roots") {
			t.Errorf("Open(%s) = %v, want refused as outside the tenant's roots", u, err)
		}
	}
	if err := r.Put(ctx, "s3://shared/beta/out.json", src); !errors.Is(err, locator.ErrForbidden) {
		t.Fatalf("Put into B's prefix: %v, want ErrForbidden", err)
	}
	if _, err := os.Stat(filepath.Join(srv.Dir, "shared", "beta", "out.json")); err == nil {
		t.Fatal("the refused Put stored the object")
	}
	// Without tenant roots (an item from an older platform) the store's
	// credentials are all that apply, as before.
	if _, cleanup, err := r.Open(t.Context(), "s3://shared/beta/clip.wav"); err != nil {
		t.Fatalf("without tenant roots: %v", err)
	} else {
		cleanup()
	}
}
