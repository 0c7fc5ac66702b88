package locator

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// root is a configured file root in its lexical and symlink-resolved forms:
// a request is checked against the first, its resolved target against the
// second (a root may itself sit behind a symlink, e.g. /var -> /private/var).
type root struct {
	clean    string
	resolved string
}

func (r *Resolver) fileRoots() ([]root, error) {
	if len(r.Roots) == 0 {
		return nil, fmt.Errorf("%w: no file roots are configured on this worker", ErrForbidden)
	}
	roots := make([]root, 0, len(r.Roots))
	for _, raw := range r.Roots {
		abs, err := filepath.Abs(raw)
		if err != nil {
			return nil, fmt.Errorf("file root %q: %w", raw, err)
		}
		rt := root{clean: abs, resolved: abs}
		// A missing root just matches nothing; resolving it is best effort.
		if res, err := filepath.EvalSymlinks(abs); err == nil {
			rt.resolved = res
		}
		roots = append(roots, rt)
	}
	return roots, nil
}

// within reports whether path p is dir or below it (both clean, absolute).
func within(dir, p string) bool {
	if dir == string(filepath.Separator) {
		return true
	}
	return p == dir || strings.HasPrefix(p, dir+string(filepath.Separator))
}

func inRoots(roots []root, p string, resolved bool) bool {
	for _, rt := range roots {
		d := rt.clean
		if resolved {
			d = rt.resolved
		}
		if within(d, p) {
			return true
		}
	}
	return false
}

// confine validates the path of a file locator lexically: absolute, no ".."
// segment, under a root. It returns the cleaned path.
func confine(roots []root, p string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%w: file path %q is not absolute", ErrInvalid, p)
	}
	// A locator never needs "..": refuse it outright rather than reason about
	// where it ends up after cleaning.
	for _, seg := range strings.Split(filepath.ToSlash(p), "/") {
		if seg == ".." {
			return "", fmt.Errorf("%w: file path %q contains a \"..\" segment", ErrForbidden, p)
		}
	}
	clean := filepath.Clean(p)
	if !inRoots(roots, clean, false) && !inRoots(roots, clean, true) {
		return "", fmt.Errorf("%w: file path %q is outside the allowed roots", ErrForbidden, clean)
	}
	return clean, nil
}

// openFile resolves a file locator (raw, of path p) for reading: the path
// must exist, be a regular file and, symlinks followed, still be under a
// root, and under one of the tenant's file roots when there are any
// (tenantCheck). It returns the resolved path so the tool opens exactly the
// file that was checked, and a cleanup func (never nil). Under tenant roots
// the path is a link to the file as opened (pinFile), since there a tenant
// may swap a directory of its own for a symlink into another's between
// the check and the tool's runs; without them a symlink swapped in between
// check and use remains a known, narrow race.
func (r *Resolver) openFile(p, raw string, tenant []root) (string, func(), error) {
	roots, err := r.fileRoots()
	if err != nil {
		return "", noop, err
	}
	clean, err := confine(roots, p)
	if err != nil {
		return "", noop, err
	}
	resolved, err := filepath.EvalSymlinks(clean)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", noop, fmt.Errorf("%w: file %q does not exist", ErrNotFound, clean)
		}
		if errors.Is(err, fs.ErrPermission) {
			return "", noop, fmt.Errorf("%w: file %q: %w", ErrForbidden, clean, err)
		}
		return "", noop, fmt.Errorf("%w: resolve %q: %w", ErrUnavailable, clean, err)
	}
	if !inRoots(roots, resolved, true) {
		return "", noop, fmt.Errorf("%w: file %q is a symlink resolving to %q, outside the allowed roots", ErrForbidden, clean, resolved)
	}
	// A symlink in one tenant's directory may lead into another's, both
	// under the worker's roots.
	if tenant != nil && !inRoots(tenant, resolved, true) {
		return "", noop, outsideTenant(raw, reasonSymlink)
	}
	fi, err := os.Stat(resolved)
	if err != nil {
		return "", noop, fmt.Errorf("%w: stat %q: %w", ErrUnavailable, resolved, err)
	}
	if !fi.Mode().IsRegular() {
		return "", noop, fmt.Errorf("%w: %q is not a regular file", ErrInvalid, clean)
	}
	if limit := r.maxBytes(); fi.Size() > limit {
		return "", noop, fmt.Errorf("%w: file %q is %d bytes, limit %d", ErrTooLarge, clean, fi.Size(), limit)
	}
	f, err := os.Open(resolved)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return "", noop, fmt.Errorf("%w: file %q: %w", ErrForbidden, clean, err)
		}
		return "", noop, fmt.Errorf("%w: open %q: %w", ErrUnavailable, clean, err)
	}
	if tenant == nil {
		_ = f.Close()
		return resolved, noop, nil
	}
	return r.pinFile(f, roots, tenant, resolved, raw)
}

// pinFile returns a path that leads to the file f, opened under a job's
// tenant roots, for as long as the job holds it (until cleanup): a symlink
// in a directory of the worker's own to /proc/<pid>/fd/<n>, which the
// kernel resolves to the open file, not by its name. A profile runs its
// tools on the path several times (ffprobe, then ffmpeg, once per
// thumbnail); by name, a tenant swapping a directory of its own for a
// symlink into another tenant's between the check and those runs would
// have them read the other's file. The link keeps the file's extension,
// which the tools read. Where the open file's path lies once opened is
// checked again, closing the window between the check and the open. The
// path is the file's name where there is no /proc (not Linux).
func (r *Resolver) pinFile(f *os.File, roots, tenant []root, resolved, raw string) (string, func(), error) {
	fail := func(err error) (string, func(), error) {
		_ = f.Close()
		return "", noop, err
	}
	fd := f.Fd()
	opened, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		_ = f.Close()
		return resolved, noop, nil // no /proc: the checked name, as before
	}
	if !inRoots(roots, opened, true) || !inRoots(tenant, opened, true) {
		return fail(outsideTenant(raw, reasonSymlink))
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return fail(fmt.Errorf("%w: %q is not a regular file", ErrInvalid, Redact(raw)))
	}
	dir, err := os.MkdirTemp(r.TempDir, "medius-input-")
	if err != nil {
		return fail(fmt.Errorf("%w: pin %s: %w", ErrUnavailable, Redact(raw), err))
	}
	link := filepath.Join(dir, "input"+filepath.Ext(resolved))
	if err := os.Symlink(fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), fd), link); err != nil {
		_ = os.RemoveAll(dir)
		return fail(fmt.Errorf("%w: pin %s: %w", ErrUnavailable, Redact(raw), err))
	}
	return link, func() {
		_ = os.RemoveAll(dir)
		_ = f.Close()
	}, nil
}

func noop() {}

// writeFile stores src at the file locator raw, of path p: the parent
// directories are created under the root (and under one of the tenant's
// file roots when there are any, see tenantCheck), and the file is written
// to a temporary name in the same directory and renamed, so a reader never
// sees half an output and a symlink at the target is replaced rather than
// followed.
func (r *Resolver) writeFile(p, raw string, tenant []root, src io.Reader) (err error) {
	roots, err := r.fileRoots()
	if err != nil {
		return err
	}
	clean, err := confine(roots, p)
	if err != nil {
		return err
	}
	dir := filepath.Dir(clean)
	// Check the deepest existing ancestor after symlinks before creating
	// anything: MkdirAll below it cannot leave the root.
	anc := dir
	for {
		if _, statErr := os.Lstat(anc); statErr == nil {
			break
		}
		parent := filepath.Dir(anc)
		if parent == anc {
			break
		}
		anc = parent
	}
	res, err := filepath.EvalSymlinks(anc)
	if err != nil {
		return fmt.Errorf("%w: resolve %q: %w", ErrUnavailable, anc, err)
	}
	if !inRoots(roots, res, true) {
		return fmt.Errorf("%w: output directory %q resolves to %q, outside the allowed roots", ErrForbidden, anc, res)
	}
	// What MkdirAll creates below anc are plain directories: the output
	// directory will lead where anc leads, joined with the rest.
	if tenant != nil {
		rel, err := filepath.Rel(anc, dir)
		if err != nil || !inRoots(tenant, filepath.Join(res, rel), true) {
			return outsideTenant(raw, reasonSymlinkDir)
		}
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("%w: create %q: %w", ErrUnavailable, dir, err)
	}
	if res, err := filepath.EvalSymlinks(dir); err != nil || !inRoots(roots, res, true) {
		return fmt.Errorf("%w: output directory %q leaves the allowed roots", ErrForbidden, dir)
	} else if tenant != nil && !inRoots(tenant, res, true) {
		return outsideTenant(raw, reasonSymlinkDir)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(clean)+".tmp-*")
	if err != nil {
		return fmt.Errorf("%w: create temp in %q: %w", ErrUnavailable, dir, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	n, err := io.Copy(tmp, io.LimitReader(src, r.maxBytes()+1))
	if err != nil {
		return fmt.Errorf("%w: write %q: %w", ErrUnavailable, clean, err)
	}
	if n > r.maxBytes() {
		return fmt.Errorf("%w: output for %q exceeds %d bytes", ErrTooLarge, clean, r.maxBytes())
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("%w: sync %q: %w", ErrUnavailable, clean, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("%w: close %q: %w", ErrUnavailable, clean, err)
	}
	if err := os.Rename(tmp.Name(), clean); err != nil {
		return fmt.Errorf("%w: rename to %q: %w", ErrUnavailable, clean, err)
	}
	return nil
}
