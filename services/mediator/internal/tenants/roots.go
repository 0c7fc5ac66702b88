package tenants

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strings"

	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/problem"
)

// A tenant's locator roots are the URL prefixes its file:// and s3://
// locators must fall under: a worker reads and writes those with its own
// rights (its --file-roots, its S3 credentials), shared by every tenant, so
// the mediator is what keeps one tenant's jobs off another's media. http(s)
// locators are network fetches, governed by the workers' network policy,
// not by roots.

// Bounds on a tenant's roots.
const (
	MaxLocatorRoots = 64
	maxRootLen      = 2048
)

// s3BucketRe is what a root may name as bucket: S3's rules (lowercase
// letters, digits, dots, dashes; some S3-compatible stores take
// underscores). An uppercase bucket is refused rather than folded: a
// locator is compared on the bucket exactly as the worker addresses it.
var s3BucketRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,254}$`)

// NormalizeLocatorRoots checks roots and returns them normalised: file
// roots absolute and cleaned, s3 roots naming a bucket; each ends in "/" (a
// prefix of whole path segments), schemes are lowercase, a file root names
// no host, and duplicates are dropped. A bad root is InvalidArgument naming
// locatorRoots[i]. None gives an empty, non-nil list.
func NormalizeLocatorRoots(roots []string) ([]string, error) {
	if len(roots) > MaxLocatorRoots {
		return nil, problem.InvalidArgument("locatorRoots", "at most %d locator roots, not %d", MaxLocatorRoots, len(roots))
	}
	out := make([]string, 0, len(roots))
	seen := map[string]bool{}
	for i, raw := range roots {
		r, err := parseRoot(raw)
		if err != nil {
			return nil, problem.InvalidArgument(fmt.Sprintf("locatorRoots[%d]", i), "locator root %q: %v", raw, err)
		}
		s := r.String()
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out, nil
}

// root is a parsed locator root. For file, dir is the cleaned directory
// (no trailing slash but for "/"); for s3, bucket and prefix ("" for the
// whole bucket, else ending in "/").
type root struct {
	scheme string
	dir    string
	bucket string
	prefix string
}

func (r root) String() string {
	if r.scheme == locator.SchemeFile {
		p := r.dir
		if p != "/" {
			p += "/"
		}
		return escapeRoot((&url.URL{Scheme: "file", Path: p}).String())
	}
	return escapeRoot((&url.URL{Scheme: "s3", Host: r.bucket, Path: "/" + r.prefix}).String())
}

// escapeRoot escapes the commas a path may hold, so that a normalised root
// can be given back in a comma-separated list (--bootstrap-locator-roots):
// "%2C" decodes to the same path.
func escapeRoot(s string) string { return strings.ReplaceAll(s, ",", "%2C") }

func parseRoot(raw string) (root, error) {
	if strings.TrimSpace(raw) == "" {
		return root{}, errors.New("empty")
	}
	if len(raw) > maxRootLen {
		return root{}, fmt.Errorf("longer than %d bytes", maxRootLen)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return root{}, errors.New("not a URL")
	}
	switch {
	case u.Opaque != "":
		return root{}, errors.New("not an absolute URL (file:///dir/ or s3://bucket/prefix/)")
	case u.User != nil:
		return root{}, errors.New("must not carry credentials")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return root{}, errors.New("must have no query or fragment")
	}
	switch scheme := strings.ToLower(u.Scheme); scheme {
	case locator.SchemeFile:
		if u.Host != "" && !strings.EqualFold(u.Host, "localhost") {
			return root{}, fmt.Errorf("file root names host %q (use file:///absolute/dir/)", u.Host)
		}
		if !strings.HasPrefix(u.Path, "/") {
			return root{}, errors.New("file root needs an absolute path (file:///absolute/dir/)")
		}
		if hasDotDot(u.Path) {
			return root{}, errors.New(`must not contain a ".." segment`)
		}
		return root{scheme: scheme, dir: path.Clean(u.Path)}, nil
	case locator.SchemeS3:
		if !s3BucketRe.MatchString(u.Host) {
			return root{}, errors.New("s3 root needs a bucket of lowercase letters, digits, '.', '-' or '_' (s3://bucket/ or s3://bucket/prefix/)")
		}
		prefix := strings.TrimPrefix(u.Path, "/")
		if prefix != "" {
			prefix = strings.TrimSuffix(prefix, "/")
			for _, seg := range strings.Split(prefix, "/") {
				if seg == "" || seg == "." || seg == ".." {
					return root{}, errors.New(`s3 prefix must not have empty, "." or ".." segments`)
				}
			}
			prefix += "/"
		}
		return root{scheme: scheme, bucket: u.Host, prefix: prefix}, nil
	case locator.SchemeHTTP, locator.SchemeHTTPS:
		return root{}, errors.New("http(s) locators are network fetches, governed by the workers' network policy, not by roots: only file:// and s3:// roots")
	case "":
		return root{}, errors.New("has no scheme (file:///dir/ or s3://bucket/prefix/)")
	default:
		return root{}, fmt.Errorf("scheme %q has no roots: only file:// and s3://", u.Scheme)
	}
}

func hasDotDot(p string) bool {
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return true
		}
	}
	return false
}

// Roots are a tenant's locator roots, parsed, for checking its jobs'
// locators. The zero value allows no file:// and no s3:// locator.
type Roots struct {
	list []root
}

// ParseRoots parses roots as stored (NormalizeLocatorRoots's output). A
// root that does not parse is left out: it allows nothing.
func ParseRoots(roots []string) Roots {
	var r Roots
	for _, raw := range roots {
		if rt, err := parseRoot(raw); err == nil {
			r.list = append(r.list, rt)
		}
	}
	return r
}

// Len is the number of roots.
func (r Roots) Len() int { return len(r.list) }

// Strings lists the roots, normalised.
func (r Roots) Strings() []string {
	out := make([]string, len(r.list))
	for i, rt := range r.list {
		out[i] = rt.String()
	}
	return out
}

// Scoped reports whether the locator URL raw is of a scheme roots govern:
// file:// or s3://, in any case.
func Scoped(raw string) bool {
	scheme, _, ok := strings.Cut(raw, ":")
	if !ok {
		return false
	}
	return strings.EqualFold(scheme, locator.SchemeFile) || strings.EqualFold(scheme, locator.SchemeS3)
}

// ErrBadLocator: the locator does not parse as the worker would read it.
var ErrBadLocator = errors.New("malformed locator")

// Within reports whether the file:// or s3:// locator raw lies under one of
// r, read exactly as the worker reads it (pkg/locator): the percent-decoded
// path, for a file cleaned, compared at a path-segment boundary
// (file:///srv/media/acme/x is under file:///srv/media/acme/,
// file:///srv/media/acme2/x is not); for s3 the bucket exactly and the
// key's prefix. A ".." segment is never within (the worker refuses it for
// files; an s3 store may resolve it), nor is a "." segment of an s3 key.
// When not within, reason says why. A locator that does not parse is
// ErrBadLocator.
func (r Roots) Within(raw string) (ok bool, reason string, err error) {
	u, err := locator.Parse(raw)
	if err != nil {
		return false, "", fmt.Errorf("%w: %w", ErrBadLocator, err)
	}
	switch u.Scheme {
	case locator.SchemeFile:
		if hasDotDot(u.Path) {
			return false, `its path has a ".." segment`, nil
		}
		p := path.Clean(u.Path)
		for _, rt := range r.list {
			if rt.scheme == locator.SchemeFile && (rt.dir == "/" || p == rt.dir || strings.HasPrefix(p, rt.dir+"/")) {
				return true, "", nil
			}
		}
	case locator.SchemeS3:
		// As the worker's s3BucketKey: the host is the bucket, the path
		// without its leading slash the key.
		key := strings.TrimPrefix(u.Path, "/")
		for _, seg := range strings.Split(key, "/") {
			if seg == "." || seg == ".." {
				return false, `its key has a "." or ".." segment`, nil
			}
		}
		for _, rt := range r.list {
			if rt.scheme == locator.SchemeS3 && rt.bucket == u.Host && strings.HasPrefix(key, rt.prefix) {
				return true, "", nil
			}
		}
	default:
		return true, "", nil // not governed by roots
	}
	if len(r.list) == 0 {
		return false, "the tenant has no locator roots", nil
	}
	return false, "it is under none of the tenant's locator roots", nil
}
