package locator

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// A file opened under a job's tenant roots stays the file that was
// checked for as long as the job holds it: a profile runs its tools on
// the path several times (ffprobe, then ffmpeg, once per thumbnail), and a
// tenant that swaps a directory of its own for a symlink into another's
// between those runs must not have the later ones read the other's file.
func TestTenantOpenPinsCheckedFile(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("pinning through /proc is Linux-only")
	}
	tn := newTenants(t)
	sub := filepath.Join(tn.acme, "sub")
	must(t, os.MkdirAll(sub, 0o750))
	write(t, filepath.Join(sub, "secret.mp4"), "acme own")
	p, cleanup, err := tn.r.Open(tn.a, fileURL(filepath.Join(sub, "secret.mp4")))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Ext(p) != ".mp4" {
		t.Errorf("opened as %s: want the extension kept, tools read it", p)
	}
	must(t, os.Rename(sub, sub+".old"))
	must(t, os.Symlink(tn.beta, sub))
	if b, err := os.ReadFile(p); err != nil || string(b) != "acme own" {
		t.Fatalf("after the swap %s reads %q, %v; want the file checked, %q", p, b, err, "acme own")
	}
	cleanup()
	if _, err := os.Stat(p); err == nil {
		t.Errorf("%s still there after cleanup", p)
	}
}
