package locator

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tenants is a worker root shared by two tenants' directories, as on a
// shared filesystem: media/acme (tenant A) and media/beta (tenant B), each
// with a clip, the worker allowed the whole of media.
type tenants struct {
	media, acme, beta string
	r                 *Resolver
	// a is a ctx carrying tenant A's roots, as the worker SDK sets it.
	a context.Context
}

func newTenants(t *testing.T) tenants {
	t.Helper()
	media := filepath.Join(t.TempDir(), "media")
	acme, beta := filepath.Join(media, "acme"), filepath.Join(media, "beta")
	for _, d := range []string{acme, beta} {
		must(t, os.MkdirAll(d, 0o750))
	}
	write(t, filepath.Join(acme, "clip.mp4"), "acme clip")
	write(t, filepath.Join(beta, "secret.mp4"), "beta secret")
	root, err := NormalizeRoot(fileURL(acme))
	must(t, err)
	return tenants{media: media, acme: acme, beta: beta, r: &Resolver{Roots: []string{media}, TempDir: t.TempDir()},
		a: WithTenantRoots(t.Context(), []string{root, "s3://shared/acme/"})}
}

// wantOutsideTenant: err is the refusal of a locator the job's tenant may
// not use.
func wantOutsideTenant(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "outside the tenant's locator roots") {
		t.Fatalf("%s: %v, want ErrForbidden, outside the tenant's locator roots", what, err)
	}
}

// A symlink in tenant A's directory leading into tenant B's, both under
// the worker's root, does not let A's job read B's file; without tenant
// roots (a work item from an older platform) the worker's own root is all
// that applies, as before.
func TestTenantRootsSymlinkRead(t *testing.T) {
	tn := newTenants(t)
	must(t, os.Symlink(filepath.Join(tn.beta, "secret.mp4"), filepath.Join(tn.acme, "link.mp4")))
	must(t, os.Symlink(tn.beta, filepath.Join(tn.acme, "dir")))
	must(t, os.Symlink(filepath.Join(tn.acme, "clip.mp4"), filepath.Join(tn.acme, "inside.mp4")))

	for _, p := range []string{filepath.Join(tn.acme, "link.mp4"), filepath.Join(tn.acme, "dir", "secret.mp4")} {
		_, cleanup, err := tn.r.Open(tn.a, fileURL(p))
		cleanup()
		wantOutsideTenant(t, "Open "+p, err)
		if !strings.Contains(err.Error(), fileURL(p)) || strings.Contains(err.Error(), "beta") {
			t.Errorf("refusal %q should name the locator, not where it leads", err)
		}
		// The worker's own root holds both: an item without roots reads it.
		got, cleanup, err := tn.r.Open(t.Context(), fileURL(p))
		cleanup()
		if err != nil || filepath.Base(got) != "secret.mp4" {
			t.Fatalf("without tenant roots: %s, %v; want the worker's roots only, as before", got, err)
		}
	}
	for _, p := range []string{filepath.Join(tn.acme, "clip.mp4"), filepath.Join(tn.acme, "inside.mp4")} {
		// Under tenant roots Open gives a link to the file as opened (see
		// TestTenantOpenPinsCheckedFile): the same file, A's clip.
		got, cleanup, err := tn.r.Open(tn.a, fileURL(p))
		gi, serr := os.Stat(got)
		cleanup()
		wi, _ := os.Stat(filepath.Join(tn.acme, "clip.mp4"))
		if err != nil || serr != nil || !os.SameFile(gi, wi) {
			t.Fatalf("Open %s under A's roots: %s, %v, %v; want A's clip", p, got, err, serr)
		}
	}
	// By name, B's file is refused before anything is looked at.
	_, cleanup, err := tn.r.Open(tn.a, fileURL(filepath.Join(tn.beta, "secret.mp4")))
	cleanup()
	wantOutsideTenant(t, "B's file by name", err)
	_, cleanup, err = tn.r.Open(tn.a, fileURL(tn.acme)+"/../beta/secret.mp4")
	cleanup()
	wantOutsideTenant(t, "through ..", err)
}

// An output whose directory is a symlink into tenant B's directory is
// refused, before any work (CheckContext) and when stored (Put), and
// nothing lands in B's directory; outputs in new directories under A's
// root are written.
func TestTenantRootsSymlinkWrite(t *testing.T) {
	tn := newTenants(t)
	must(t, os.Symlink(tn.beta, filepath.Join(tn.acme, "out")))
	src := filepath.Join(t.TempDir(), "result.json")
	write(t, src, `{"ok":true}`)

	for _, u := range []string{
		fileURL(filepath.Join(tn.acme, "out", "result.json")),
		fileURL(filepath.Join(tn.acme, "out", "new", "deeper", "result.json")),
	} {
		wantOutsideTenant(t, "Put "+u, tn.r.Put(tn.a, u, src))
		wantOutsideTenant(t, "CheckContext "+u, tn.r.CheckContext(tn.a, u))
	}
	wantOutsideTenant(t, "CheckContext of the output folder", tn.r.CheckContext(tn.a, fileURL(filepath.Join(tn.acme, "out"))+"/"))
	entries, err := os.ReadDir(tn.beta)
	must(t, err)
	if len(entries) != 1 || entries[0].Name() != "secret.mp4" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("B's directory holds %q after refused writes, want only secret.mp4", names)
	}

	dst := filepath.Join(tn.acme, "new", "deeper", "result.json")
	must(t, tn.r.CheckContext(tn.a, fileURL(dst)))
	must(t, tn.r.Put(tn.a, fileURL(dst), src))
	if b, err := os.ReadFile(dst); err != nil || string(b) != `{"ok":true}` {
		t.Fatalf("output under A's root: %q, %v", b, err)
	}
	// A symlink at the target itself is replaced, never followed.
	must(t, os.Symlink(filepath.Join(tn.beta, "secret.mp4"), filepath.Join(tn.acme, "target.mp4")))
	must(t, tn.r.Put(tn.a, fileURL(filepath.Join(tn.acme, "target.mp4")), src))
	if b, _ := os.ReadFile(filepath.Join(tn.beta, "secret.mp4")); string(b) != "beta secret" {
		t.Fatalf("B's file overwritten: %q", b)
	}

	// Without tenant roots the worker's own root is all that applies.
	old := fileURL(filepath.Join(tn.acme, "out", "old.json"))
	must(t, tn.r.Put(t.Context(), old, src))
	if _, err := os.Stat(filepath.Join(tn.beta, "old.json")); err != nil {
		t.Fatalf("without tenant roots, the write through the symlink: %v", err)
	}
}

// A tenant root that is itself a symlink (or lies under one) allows what
// it leads to: where a file leads is compared with where the root leads.
func TestTenantRootBehindSymlink(t *testing.T) {
	tn := newTenants(t)
	alias := filepath.Join(tn.media, "acme-alias")
	must(t, os.Symlink(tn.acme, alias))
	root, err := NormalizeRoot(fileURL(alias))
	must(t, err)
	ctx := WithTenantRoots(t.Context(), []string{root})
	_, cleanup, err := tn.r.Open(ctx, fileURL(filepath.Join(alias, "clip.mp4")))
	cleanup()
	must(t, err)
	src := filepath.Join(t.TempDir(), "x")
	write(t, src, "x")
	must(t, tn.r.Put(ctx, fileURL(filepath.Join(alias, "made", "x")), src))
	if _, err := os.Stat(filepath.Join(tn.acme, "made", "x")); err != nil {
		t.Fatal(err)
	}
	// Named by its real path, the file is not under the root's name.
	_, cleanup, err = tn.r.Open(ctx, fileURL(filepath.Join(tn.acme, "clip.mp4")))
	cleanup()
	wantOutsideTenant(t, "the real path of a file under an aliased root", err)
}

// A tenant with no roots resolves no file:// or s3:// locator, whatever the
// worker's own policy allows; http(s) is the network policy's, not the
// roots'.
func TestTenantNoRoots(t *testing.T) {
	tn := newTenants(t)
	tn.r.S3 = &S3Config{Endpoint: "http://127.0.0.1:1"}
	tn.r.AllowPrivate = true
	src := filepath.Join(t.TempDir(), "x")
	write(t, src, "x")
	for _, roots := range [][]string{nil, {}} {
		ctx := WithTenantRoots(t.Context(), roots)
		clip := fileURL(filepath.Join(tn.acme, "clip.mp4"))
		_, cleanup, err := tn.r.Open(ctx, clip)
		cleanup()
		wantOutsideTenant(t, "Open with no roots", err)
		if !strings.Contains(err.Error(), "no locator roots") {
			t.Errorf("refusal %q does not say the tenant has none", err)
		}
		wantOutsideTenant(t, "Put with no roots", tn.r.Put(ctx, fileURL(filepath.Join(tn.acme, "y")), src))
		wantOutsideTenant(t, "CheckContext with no roots", tn.r.CheckContext(ctx, clip))
		wantOutsideTenant(t, "s3 with no roots", tn.r.CheckContext(ctx, "s3://shared/acme/x"))
		if err := tn.r.CheckContext(ctx, "http://127.0.0.1:8080/x"); err != nil {
			t.Errorf("http with no roots: %v, want the network policy only", err)
		}
	}
	if _, err := os.Stat(filepath.Join(tn.acme, "y")); err == nil {
		t.Error("Put wrote with no roots")
	}
	// Check, with no ctx, applies the worker's policy only.
	must(t, tn.r.Check(fileURL(filepath.Join(tn.acme, "clip.mp4"))))
}
