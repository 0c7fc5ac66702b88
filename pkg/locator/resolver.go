package locator

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Defaults of a zero Resolver.
const (
	DefaultMaxBytes      int64 = 10 << 30 // 10 GiB
	DefaultDialTimeout         = 10 * time.Second
	DefaultHeaderTimeout       = 30 * time.Second
	// DefaultStallTimeout bounds how long a transfer may make no progress:
	// a whole-transfer timeout would have to allow for 10 GiB, which is no
	// protection against a server that trickles or stops.
	DefaultStallTimeout = 60 * time.Second
)

// Resolver opens input locators as local files and stores outputs at output
// locators. The zero value refuses every file:// locator (no roots) and every
// internal address. A Resolver is safe for concurrent use; do not change its
// fields after first use.
type Resolver struct {
	// Roots are the directories file:// locators may name (inputs and outputs).
	Roots []string
	// AllowPrivate lets http(s) locators reach loopback, private, link-local
	// and unspecified addresses (development, or a trusted internal store).
	AllowPrivate bool
	// MaxBytes limits the size of an input or output; 0 means DefaultMaxBytes.
	MaxBytes int64
	// TempDir receives downloaded inputs; empty means os.TempDir().
	TempDir string
	// StallTimeout aborts a transfer that makes no progress for this long;
	// 0 means DefaultStallTimeout.
	StallTimeout time.Duration
	// Client, when set, is used for http(s) as is: the caller then owns the
	// network policy (use NewTransport to keep it). Nil builds a client whose
	// transport enforces AllowPrivate at dial time.
	Client *http.Client
	// S3, when set, enables s3://bucket/key locators on that store.
	S3 *S3Config

	once   sync.Once
	client *http.Client
	s3Once sync.Once
	s3     *s3.Client
}

func (r *Resolver) maxBytes() int64 {
	if r.MaxBytes > 0 {
		return r.MaxBytes
	}
	return DefaultMaxBytes
}

func (r *Resolver) stallTimeout() time.Duration {
	if r.StallTimeout > 0 {
		return r.StallTimeout
	}
	return DefaultStallTimeout
}

func (r *Resolver) httpClient() *http.Client {
	r.once.Do(func() {
		if r.Client != nil {
			r.client = r.Client
			return
		}
		r.client = &http.Client{
			Transport: NewTransport(r.AllowPrivate),
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= 5 {
					return fmt.Errorf("%w: more than 5 redirects", ErrUnavailable)
				}
				// Redirect targets go through the same dialer, so the address
				// policy holds for them too; only check the scheme here.
				if req.URL.Scheme != SchemeHTTP && req.URL.Scheme != SchemeHTTPS {
					return fmt.Errorf("%w: redirect to scheme %q", ErrForbidden, req.URL.Scheme)
				}
				return nil
			},
		}
	})
	return r.client
}

// Open makes the input at raw available as a local file and returns its path
// and a cleanup func to call when done with it (never nil, also on error).
// A file:// locator yields the checked file itself (cleanup does nothing),
// or, under tenant roots, a link that leads to it as opened until cleanup
// (see pinFile); an http(s) or s3 locator is downloaded into a temporary
// file that cleanup removes.
// A file:// or s3:// locator must also lie under the tenant roots ctx
// carries, if any (WithTenantRoots).
func (r *Resolver) Open(ctx context.Context, raw string) (localPath string, cleanup func(), err error) {
	noop := func() {}
	u, err := Parse(raw)
	if err != nil {
		return "", noop, err
	}
	tenant, err := tenantCheck(ctx, u, raw)
	if err != nil {
		return "", noop, err
	}
	switch u.Scheme {
	case SchemeFile:
		return r.openFile(u.Path, raw, tenant)
	case SchemeHTTP, SchemeHTTPS:
		p, err := r.download(ctx, u)
		if err != nil {
			return "", noop, err
		}
		return p, func() { _ = os.Remove(p) }, nil
	case SchemeS3:
		p, err := r.s3Download(ctx, u)
		if err != nil {
			return "", noop, err
		}
		return p, func() { _ = os.Remove(p) }, nil
	default:
		return "", noop, fmt.Errorf("%w: %s locators are not supported by this worker yet", ErrUnsupportedScheme, u.Scheme)
	}
}

// Put stores the contents of the local file src at the output locator raw:
// written atomically under a file root, or PUT to an http(s) URL. A
// file:// or s3:// locator must also lie under the tenant roots ctx
// carries, if any (WithTenantRoots).
func (r *Resolver) Put(ctx context.Context, raw, src string) error {
	u, err := Parse(raw)
	if err != nil {
		return err
	}
	tenant, err := tenantCheck(ctx, u, raw)
	if err != nil {
		return err
	}
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open output %q: %w", src, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat output %q: %w", src, err)
	}
	if fi.Size() > r.maxBytes() {
		return fmt.Errorf("%w: output %q is %d bytes, limit %d", ErrTooLarge, src, fi.Size(), r.maxBytes())
	}
	switch u.Scheme {
	case SchemeFile:
		if err := ctx.Err(); err != nil {
			return err
		}
		return r.writeFile(u.Path, raw, tenant, f)
	case SchemeHTTP, SchemeHTTPS:
		return r.upload(ctx, u, f, fi.Size())
	case SchemeS3:
		return r.s3Upload(ctx, u, f, fi.Size())
	default:
		return fmt.Errorf("%w: %s locators are not supported by this worker yet", ErrUnsupportedScheme, u.Scheme)
	}
}

// Check applies the policy to raw without transferring anything: the scheme
// is supported, a file:// path is under a root, an http(s) host given as an
// IP literal is allowed. Host names are only checked when dialled. It
// applies no tenant roots: a job's profile uses CheckContext.
func (r *Resolver) Check(raw string) error {
	return r.CheckContext(context.Background(), raw)
}

// CheckContext is Check, also applying the tenant roots ctx carries, if any
// (WithTenantRoots): a file:// or s3:// locator must lie under one of them,
// and a file:// path, as far as it exists, must lead under one once
// symlinks are followed (an output directory that is a symlink out of them
// is refused before any work is spent).
func (r *Resolver) CheckContext(ctx context.Context, raw string) error {
	u, err := Parse(raw)
	if err != nil {
		return err
	}
	tenant, err := tenantCheck(ctx, u, raw)
	if err != nil {
		return err
	}
	switch u.Scheme {
	case SchemeFile:
		roots, err := r.fileRoots()
		if err != nil {
			return err
		}
		clean, err := confine(roots, u.Path)
		if err != nil || tenant == nil {
			return err
		}
		res, err := resolveExisting(clean)
		if err != nil {
			return fmt.Errorf("%w: resolve %q: %w", ErrUnavailable, clean, err)
		}
		if !inRoots(tenant, res, true) {
			return outsideTenant(raw, reasonSymlink)
		}
		return nil
	case SchemeHTTP, SchemeHTTPS:
		return r.checkHost(u.Hostname())
	case SchemeS3:
		_, err := r.s3Client()
		return err
	default:
		return fmt.Errorf("%w: %s locators are not supported by this worker yet", ErrUnsupportedScheme, u.Scheme)
	}
}

// stallReader cancels a transfer when no byte arrives for timeout.
type stallReader struct {
	r      io.Reader
	timer  *time.Timer
	period time.Duration
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.timer.Reset(s.period)
	}
	return n, err
}
