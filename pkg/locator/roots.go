package locator

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strings"
)

// A tenant's locator roots are the URL prefixes its file:// and s3://
// locators must fall under: a worker reads and writes those with its own
// rights (its file roots, its S3 credentials), shared by every tenant, so
// the roots are what keeps one tenant's jobs off another's media. The
// mediator checks a job's locators against them when it accepts the job;
// the worker's Resolver checks every locator the job resolves again (see
// WithTenantRoots), with the same comparison: both use TenantRoots. http(s)
// locators are network fetches, governed by the workers' network policy,
// not by roots.

// MaxRootLen bounds the length of one locator root.
const MaxRootLen = 2048

// s3BucketRe is what a root may name as bucket: S3's rules (lowercase
// letters, digits, dots, dashes; some S3-compatible stores take
// underscores). An uppercase bucket is refused rather than folded: a
// locator is compared on the bucket exactly as the worker addresses it.
var s3BucketRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,254}$`)

// tenantRoot is a parsed locator root. For file, dir is the cleaned
// directory (no trailing slash but for "/"); for s3, bucket and prefix (""
// for the whole bucket, else ending in "/").
type tenantRoot struct {
	scheme string
	dir    string
	bucket string
	prefix string
}

func (r tenantRoot) String() string {
	if r.scheme == SchemeFile {
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

// NormalizeRoot checks the locator root raw and returns it normalised: a
// file root absolute and cleaned, naming no host; an s3 root naming a
// bucket; either ending in "/" (a prefix of whole path segments), its
// scheme lowercase. The error says what is wrong with it.
func NormalizeRoot(raw string) (string, error) {
	r, err := parseTenantRoot(raw)
	if err != nil {
		return "", err
	}
	// The bound holds the root as stored, percent-encoded (a space or a
	// non-ASCII letter takes three times its room): ParseTenantRoots, which
	// the mediator and the workers read stored roots with, leaves out one
	// over it, so accepted longer it would allow nothing.
	s := r.String()
	if len(s) > MaxRootLen {
		return "", fmt.Errorf("longer than %d bytes once normalised (%d, percent-encoded)", MaxRootLen, len(s))
	}
	return s, nil
}

func parseTenantRoot(raw string) (tenantRoot, error) {
	if strings.TrimSpace(raw) == "" {
		return tenantRoot{}, errors.New("empty")
	}
	if len(raw) > MaxRootLen {
		return tenantRoot{}, fmt.Errorf("longer than %d bytes", MaxRootLen)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return tenantRoot{}, errors.New("not a URL")
	}
	switch {
	case u.Opaque != "":
		return tenantRoot{}, errors.New("not an absolute URL (file:///dir/ or s3://bucket/prefix/)")
	case u.User != nil:
		return tenantRoot{}, errors.New("must not carry credentials")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return tenantRoot{}, errors.New("must have no query or fragment")
	}
	switch scheme := strings.ToLower(u.Scheme); scheme {
	case SchemeFile:
		if u.Host != "" && !strings.EqualFold(u.Host, "localhost") {
			return tenantRoot{}, fmt.Errorf("file root names host %q (use file:///absolute/dir/)", u.Host)
		}
		if !strings.HasPrefix(u.Path, "/") {
			return tenantRoot{}, errors.New("file root needs an absolute path (file:///absolute/dir/)")
		}
		if hasDotDot(u.Path) {
			return tenantRoot{}, errors.New(`must not contain a ".." segment`)
		}
		return tenantRoot{scheme: scheme, dir: path.Clean(u.Path)}, nil
	case SchemeS3:
		if !s3BucketRe.MatchString(u.Host) {
			return tenantRoot{}, errors.New("s3 root needs a bucket of lowercase letters, digits, '.', '-' or '_' (s3://bucket/ or s3://bucket/prefix/)")
		}
		prefix := strings.TrimPrefix(u.Path, "/")
		if prefix != "" {
			prefix = strings.TrimSuffix(prefix, "/")
			for _, seg := range strings.Split(prefix, "/") {
				if seg == "" || seg == "." || seg == ".." {
					return tenantRoot{}, errors.New(`s3 prefix must not have empty, "." or ".." segments`)
				}
			}
			prefix += "/"
		}
		return tenantRoot{scheme: scheme, bucket: u.Host, prefix: prefix}, nil
	case SchemeHTTP, SchemeHTTPS:
		return tenantRoot{}, errors.New("http(s) locators are network fetches, governed by the workers' network policy, not by roots: only file:// and s3:// roots")
	case "":
		return tenantRoot{}, errors.New("has no scheme (file:///dir/ or s3://bucket/prefix/)")
	default:
		return tenantRoot{}, fmt.Errorf("scheme %q has no roots: only file:// and s3://", u.Scheme)
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

// TenantRoots are a tenant's locator roots, parsed, for checking its jobs'
// locators. The zero value allows no file:// and no s3:// locator.
type TenantRoots struct {
	list []tenantRoot
	// norm are the roots normalised, as Strings gives them: kept, since the
	// mediator gives them to every job it creates.
	norm []string
}

// ParseTenantRoots parses roots as stored (NormalizeRoot's output). A root
// that does not parse is left out: it allows nothing.
func ParseTenantRoots(roots []string) TenantRoots {
	var r TenantRoots
	for _, raw := range roots {
		if rt, err := parseTenantRoot(raw); err == nil {
			r.list = append(r.list, rt)
			r.norm = append(r.norm, rt.String())
		}
	}
	return r
}

// Len is the number of roots.
func (r TenantRoots) Len() int { return len(r.list) }

// Strings lists the roots, normalised; the caller owns the list.
func (r TenantRoots) Strings() []string {
	return append(make([]string, 0, len(r.norm)), r.norm...)
}

// Rooted reports whether the locator URL raw is of a scheme roots govern:
// file:// or s3://, in any case.
func Rooted(raw string) bool {
	scheme, _, ok := strings.Cut(raw, ":")
	if !ok {
		return false
	}
	return strings.EqualFold(scheme, SchemeFile) || strings.EqualFold(scheme, SchemeS3)
}

// Within reports whether the file:// or s3:// locator raw lies under one of
// r, read exactly as the Resolver reads it: the percent-decoded path, for a
// file cleaned, compared at a path-segment boundary
// (file:///srv/media/acme/x is under file:///srv/media/acme/,
// file:///srv/media/acme2/x is not); for s3 the bucket exactly and the
// key's prefix. A ".." segment is never within (the Resolver refuses it for
// files; an s3 store may resolve it), nor is a "." segment of an s3 key.
// Other schemes are within. When not within, reason says why. A locator
// that does not parse is Parse's error (ErrInvalid).
//
// Within compares names only: the Resolver also compares where a file
// locator leads once symlinks are followed.
func (r TenantRoots) Within(raw string) (ok bool, reason string, err error) {
	u, err := Parse(raw)
	if err != nil {
		return false, "", err
	}
	ok, reason = r.within(u)
	return ok, reason, nil
}

// within is Within on a parsed locator.
func (r TenantRoots) within(u *url.URL) (bool, string) {
	switch u.Scheme {
	case SchemeFile:
		if hasDotDot(u.Path) {
			return false, `its path has a ".." segment`
		}
		p := path.Clean(u.Path)
		for _, rt := range r.list {
			if rt.scheme == SchemeFile && (rt.dir == "/" || p == rt.dir || strings.HasPrefix(p, rt.dir+"/")) {
				return true, ""
			}
		}
	case SchemeS3:
		// As s3BucketKey: the host is the bucket, the path without its
		// leading slash the key.
		key := strings.TrimPrefix(u.Path, "/")
		for _, seg := range strings.Split(key, "/") {
			if seg == "." || seg == ".." {
				return false, `its key has a "." or ".." segment`
			}
		}
		for _, rt := range r.list {
			if rt.scheme == SchemeS3 && rt.bucket == u.Host && strings.HasPrefix(key, rt.prefix) {
				return true, ""
			}
		}
	default:
		return true, "" // not governed by roots
	}
	if len(r.list) == 0 {
		return false, reasonNoRoots
	}
	return false, reasonUnderNone
}

// Reasons Within gives for the commonest refusals.
const (
	reasonNoRoots   = "the tenant has no locator roots"
	reasonUnderNone = "it is under none of the tenant's locator roots"
)
