package locator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path"
	"syscall"
	"time"
)

// forbiddenAddr refuses an IP-literal host a tenant named, saying why.
func forbiddenAddr(ip netip.Addr) error {
	if why := InternalAddr(ip); why != "" {
		return fmt.Errorf("%w: %s is %s (internal addresses are not allowed on this worker)", ErrForbidden, ip, why)
	}
	return nil
}

// NewTransport returns an HTTP transport for locators. Unless allowPrivate,
// it refuses to connect to internal addresses; the check runs in the
// dialer's Control hook on the resolved IP about to be connected, so DNS
// answers (including rebinding between checks) and redirects cannot bypass
// it. It ignores proxy environment variables: the proxy would be what is
// dialled, defeating the check.
func NewTransport(allowPrivate bool) *http.Transport {
	d := &net.Dialer{Timeout: DefaultDialTimeout, KeepAlive: 30 * time.Second}
	if !allowPrivate {
		d.Control = func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: cannot check address %q: %w", ErrForbidden, address, err)
			}
			// The address a host name resolved to is the deployment's
			// business, not the tenant's: the error names neither it nor
			// what it reaches (the worker's own view of its network).
			if InternalAddr(ap.Addr()) != "" {
				return fmt.Errorf("%w: the host resolves to an internal address, which Medius does not connect to on a tenant's behalf", ErrForbidden)
			}
			return nil
		}
	}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           dialHidingRefused(d),
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: DefaultHeaderTimeout,
		ExpectContinueTimeout: time.Second,
	}
}

// dialHidingRefused dials with d, and drops the *net.OpError around a
// refusal by d's Control hook: it names the resolved address, which the
// refusal keeps from the tenant.
func dialHidingRefused(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		var oe *net.OpError
		if err != nil && errors.As(err, &oe) && errors.Is(oe.Err, ErrForbidden) {
			return nil, oe.Err
		}
		return conn, err
	}
}

// checkHost refuses an IP-literal host the policy forbids before any I/O, for
// a clear error; host names are checked at dial time.
func (r *Resolver) checkHost(host string) error {
	if r.AllowPrivate {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return forbiddenAddr(ip)
	}
	return nil
}

var errStalled = errors.New("transfer stalled")

// WithoutURL drops the *url.Error around an HTTP client's err: it repeats
// the whole URL, user info and query (signatures, tokens) included, where
// the caller names it redacted (Redact).
func WithoutURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// transferErr classifies a failed request or body transfer.
func transferErr(ctx context.Context, op string, u *url.URL, err error) error {
	err = WithoutURL(err)
	target := Redact(u.String())
	switch {
	case errors.Is(context.Cause(ctx), errStalled):
		return fmt.Errorf("%w: %s %s: no data for the stall timeout", ErrUnavailable, op, target)
	case errors.Is(err, ErrForbidden), errors.Is(err, ErrTooLarge), errors.Is(err, ErrUnavailable):
		return fmt.Errorf("%s %s: %w", op, target, err)
	case ctx.Err() != nil:
		// The caller's context ended (job canceled, shutdown): not a
		// property of the locator, so pass the context error through.
		return fmt.Errorf("%s %s: %w", op, target, context.Cause(ctx))
	default:
		return fmt.Errorf("%w: %s %s: %w", ErrUnavailable, op, target, err)
	}
}

func statusErr(op string, u *url.URL, code int) error {
	var kind error
	switch {
	case code == http.StatusNotFound || code == http.StatusGone:
		kind = ErrNotFound
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		kind = ErrForbidden
	case code == http.StatusRequestEntityTooLarge:
		kind = ErrTooLarge
	default:
		kind = ErrUnavailable
	}
	return fmt.Errorf("%w: %s %s: server answered %d %s", kind, op, Redact(u.String()), code, http.StatusText(code))
}

// download GETs u into a temporary file and returns its path.
func (r *Resolver) download(parent context.Context, u *url.URL) (_ string, err error) {
	if err := r.checkHost(u.Hostname()); err != nil {
		return "", err
	}
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	resp, err := r.httpClient().Do(req)
	if err != nil {
		return "", transferErr(ctx, "GET", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", statusErr("GET", u, resp.StatusCode)
	}
	limit := r.maxBytes()
	if resp.ContentLength > limit {
		return "", fmt.Errorf("%w: GET %s: %d bytes, limit %d", ErrTooLarge, Redact(u.String()), resp.ContentLength, limit)
	}
	// Keep the extension: some tools pick a demuxer by it.
	f, err := os.CreateTemp(r.TempDir, "medius-input-*"+path.Ext(u.Path))
	if err != nil {
		return "", fmt.Errorf("%w: temp file: %w", ErrUnavailable, err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	stall := r.stallTimeout()
	timer := time.AfterFunc(stall, func() { cancel(errStalled) })
	defer timer.Stop()
	n, err := io.Copy(f, io.LimitReader(&stallReader{r: resp.Body, timer: timer, period: stall}, limit+1))
	if err != nil {
		return "", transferErr(ctx, "GET", u, err)
	}
	if n > limit {
		return "", fmt.Errorf("%w: GET %s: more than %d bytes", ErrTooLarge, Redact(u.String()), limit)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("%w: write temp file: %w", ErrUnavailable, err)
	}
	return f.Name(), nil
}

// upload PUTs size bytes of body to u.
func (r *Resolver) upload(parent context.Context, u *url.URL, body io.Reader, size int64) error {
	if err := r.checkHost(u.Hostname()); err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	stall := r.stallTimeout()
	timer := time.AfterFunc(stall, func() { cancel(errStalled) })
	defer timer.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), &stallReader{r: body, timer: timer, period: stall})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	req.ContentLength = size
	if size == 0 {
		// A non-nil body of length 0 would be sent chunked.
		req.Body = http.NoBody
	}
	resp, err := r.httpClient().Do(req)
	if err != nil {
		return transferErr(ctx, "PUT", u, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return statusErr("PUT", u, resp.StatusCode)
	}
	return nil
}
