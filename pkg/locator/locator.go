// Package locator turns job locators (jobsv1.Locator.url) into local files a
// tool can read, and stores tool outputs at locators, under a policy:
//
//   - file:///path is confined to configured roots. A path with a ".."
//     segment, an absolute path outside every root and a symlink resolving
//     outside the roots are all refused.
//   - http(s)://host/path is fetched into a temporary file with a size limit
//     and timeouts, and outputs are PUT there. Loopback, private, link-local,
//     multicast and unspecified addresses are refused unless AllowPrivate is
//     set; the check runs on the address actually dialled, so a host name
//     that resolves (or redirects) to an internal address does not get
//     through.
//   - s3://bucket/key is read and written through the AWS SDK on the
//     configured S3-compatible store (Resolver.S3); without one it is
//     refused with ErrUnsupportedScheme.
//
// A job's file:// and s3:// locators must also lie under its tenant's
// locator roots (TenantRoots), which the worker SDK puts on each job's ctx
// (WithTenantRoots): by name, as the mediator checks them, and for a file
// where it leads once symlinks are followed, so that a symlink in one
// tenant's directory cannot lead into another's under the same worker root.
//
// Every error wraps one of the Err* sentinels so callers can map it with
// errors.Is (for example to an RFC 7807 problem type).
package locator

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Sentinel errors; every error returned by this package wraps exactly one.
var (
	// ErrInvalid: the locator is malformed.
	ErrInvalid = errors.New("invalid locator")
	// ErrUnsupportedScheme: the scheme is not (yet) handled.
	ErrUnsupportedScheme = errors.New("unsupported locator scheme")
	// ErrForbidden: the policy refuses the locator (outside the roots,
	// internal address...) or the remote server refused access.
	ErrForbidden = errors.New("locator forbidden")
	// ErrNotFound: the file or remote object does not exist.
	ErrNotFound = errors.New("locator not found")
	// ErrTooLarge: the object exceeds the configured size limit.
	ErrTooLarge = errors.New("locator object too large")
	// ErrUnavailable: the object could not be read or written now (network
	// error, timeout, server error); a retry may succeed.
	ErrUnavailable = errors.New("locator unavailable")
)

// Schemes that Parse accepts.
const (
	SchemeFile  = "file"
	SchemeHTTP  = "http"
	SchemeHTTPS = "https"
	SchemeS3    = "s3"
)

// Parse checks that raw is a well-formed locator of a known scheme and
// returns it parsed. It does no I/O and applies no policy, so the mediator
// can validate a job's locators before accepting it; the worker's Resolver
// decides whether it may actually read them.
func Parse(raw string) (*url.URL, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, fmt.Errorf("%w: empty url", ErrInvalid)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	switch u.Scheme {
	case SchemeFile:
		// file://host/path would silently drop host; file://relative/x is a
		// common mistake for file:///relative/x. Only an empty host or
		// localhost means "this machine".
		if u.Host != "" && !strings.EqualFold(u.Host, "localhost") {
			return nil, fmt.Errorf("%w: file url %q has host %q (use file:///absolute/path)", ErrInvalid, raw, u.Host)
		}
		if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
			return nil, fmt.Errorf("%w: file url %q needs an absolute path", ErrInvalid, raw)
		}
	case SchemeHTTP, SchemeHTTPS:
		if u.Hostname() == "" {
			return nil, fmt.Errorf("%w: %s url %q has no host", ErrInvalid, u.Scheme, raw)
		}
		if u.User != nil {
			// Credentials in job records would be stored and logged.
			return nil, fmt.Errorf("%w: %s url must not carry credentials", ErrInvalid, u.Scheme)
		}
	case SchemeS3:
		if u.Host == "" || strings.Trim(u.Path, "/") == "" {
			return nil, fmt.Errorf("%w: s3 url %q needs s3://bucket/key", ErrInvalid, raw)
		}
	case "":
		return nil, fmt.Errorf("%w: %q has no scheme (want file, http, https or s3)", ErrInvalid, raw)
	default:
		return nil, fmt.Errorf("%w: %q (want file, http, https or s3)", ErrUnsupportedScheme, u.Scheme)
	}
	return u, nil
}

// Redact returns raw without user info and query string, for logs and error
// messages: signed URLs carry their credentials in the query.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparsable url>"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "..."
	}
	u.Fragment = ""
	return u.String()
}
