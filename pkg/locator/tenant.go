package locator

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sync"
)

// WithTenantRoots returns ctx carrying the locator roots of the tenant whose
// job runs under it (roots as stored, NormalizeRoot's output). A Resolver
// then resolves a file:// or s3:// locator under ctx (Open, Put,
// CheckContext) only if it lies under one of them, besides its own policy:
// its name, compared as TenantRoots.Within compares it, and for a file
// where it leads once symlinks are followed, compared with where the root
// itself leads. None (nil or empty) allows no file:// or s3:// locator at
// all. A ctx without tenant roots (a job from a platform that does not
// send them) gets the Resolver's own policy only.
//
// The worker SDK sets them on every handler's ctx from its work item
// (WorkItem.locator_roots), so a profile that resolves through a Resolver
// with that ctx, or one derived from it, is held to the job's roots
// whatever it resolves, parameters the mediator never saw as locators
// included.
func WithTenantRoots(ctx context.Context, roots []string) context.Context {
	return context.WithValue(ctx, tenantRootsKey{}, &tenantScope{raw: roots})
}

// TenantRootsFrom returns the tenant roots ctx carries (WithTenantRoots),
// and whether it carries any.
func TenantRootsFrom(ctx context.Context) (TenantRoots, bool) {
	s, _ := ctx.Value(tenantRootsKey{}).(*tenantScope)
	if s == nil {
		return TenantRoots{}, false
	}
	s.once.Do(func() { s.roots = ParseTenantRoots(s.raw) })
	return s.roots, true
}

type tenantRootsKey struct{}

// tenantScope holds a job's roots, parsed when its first locator is
// resolved: a job that resolves none pays for the ctx value only.
type tenantScope struct {
	raw   []string
	once  sync.Once
	roots TenantRoots
}

// tenantCheck applies ctx's tenant roots to the locator u (raw as given)
// by its name. For a file locator within them it returns the tenant's file
// roots, lexical and resolved, to compare where the path leads with; nil
// when ctx carries no tenant roots or u is no file.
func tenantCheck(ctx context.Context, u *url.URL, raw string) ([]root, error) {
	if u.Scheme != SchemeFile && u.Scheme != SchemeS3 {
		return nil, nil
	}
	tr, ok := TenantRootsFrom(ctx)
	if !ok {
		return nil, nil
	}
	if in, why := tr.within(u); !in {
		return nil, outsideTenant(raw, why)
	}
	if u.Scheme != SchemeFile {
		return nil, nil
	}
	return tr.fileRoots(), nil
}

// fileRoots are r's file roots in their lexical and resolved forms (see
// root): a root behind a symlink, or under one, is compared with where it
// leads. A root that does not exist here leads where its deepest existing
// ancestor does.
func (r TenantRoots) fileRoots() []root {
	var out []root
	for _, rt := range r.list {
		if rt.scheme != SchemeFile {
			continue
		}
		res, err := resolveExisting(rt.dir)
		if err != nil {
			res = rt.dir // matches what lies there lexically, if anything
		}
		out = append(out, root{clean: rt.dir, resolved: res})
	}
	return out
}

// outsideTenant is the refusal of locator raw, outside the tenant's roots
// for reason why.
func outsideTenant(raw, why string) error {
	msg := Redact(raw) + " is outside the tenant's locator roots"
	if why != reasonUnderNone {
		msg += ": " + why
	}
	return fmt.Errorf("%w: %s", ErrForbidden, msg)
}

// Reasons of a file locator refused for where it leads. The target is not
// named: it is another tenant's.
const (
	reasonSymlink    = "it leads outside them through a symlink"
	reasonSymlinkDir = "its directory leads outside them through a symlink"
)

// resolveExisting is where the clean, absolute path p leads: its deepest
// existing ancestor with symlinks followed, joined with the rest of p,
// which does not exist yet (MkdirAll creates it as plain directories).
func resolveExisting(p string) (string, error) {
	anc, rest := p, ""
	for {
		if _, err := os.Lstat(anc); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(anc)
		if parent == anc {
			break
		}
		rest = filepath.Join(filepath.Base(anc), rest)
		anc = parent
	}
	res, err := filepath.EvalSymlinks(anc)
	if err != nil {
		return "", err
	}
	return filepath.Join(res, rest), nil
}
