// Package webhook tells a job's notification endpoint about every status
// change: at least once, signed, retried with exponential backoff up to a
// limit, each request bounded in time.
//
// A change is first published on the events stream (subject
// medius.events.webhook.<job>, msg id per state (see msgID), so a repeated
// change is de-duplicated); the durable consumer "mediator-webhooks" delivers
// it and acks only after the endpoint answered 2xx, so a mediator crash or an
// endpoint outage only delays the POST.
//
// Each POST carries the job as JSON and these headers:
//
//	Medius-Event-Id:   unique per change (receivers de-duplicate on it)
//	Medius-Timestamp:  Unix seconds when this attempt was signed
//	Medius-Signature:  v1=<hex HMAC-SHA256(tenant webhook secret, "<timestamp>.<body>")>
//
// Receivers recompute the HMAC over the timestamp, a dot and the raw body,
// compare in constant time, and refuse timestamps older than a few minutes.
//
// A job's notifications are posted one at a time, in the order of its
// changes (by one mediator: replicas sharing the consumer each post what
// they were handed); a change whose POST failed waits for its retry
// without holding the job's later changes back, so those may arrive before
// it. Different jobs' notifications are posted in parallel: at most
// Config.Concurrency at once per mediator, of which at most
// Config.PerTenant for one tenant and Config.PerEndpoint for one tenant's
// endpoint host. An endpoint that answers slowly or not at all (each POST
// may take Config.Timeout, each change is tried up to Config.MaxAttempts
// times) so delays the notifications waiting for it; its tenant's other
// endpoints only once that tenant's slow endpoints take all its PerTenant
// slots; another tenant's only once Concurrency/PerTenant tenants are that
// slow at once. Beyond those, Config.MaxPending bounds the notifications
// delivered and not yet settled (waiting for their turn or for their
// retry) across the mediators: a tenant with that many slow or failing
// notifications queued ahead of others' still delays theirs until its
// backlog falls below it.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/metrics"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
)

// Headers of a notification.
const (
	HeaderEventID   = "Medius-Event-Id"
	HeaderTimestamp = "Medius-Timestamp"
	HeaderSignature = "Medius-Signature"
)

// Durable is the delivery consumer; subjectPrefix its subjects.
const (
	Durable       = "mediator-webhooks"
	subjectPrefix = "medius.events.webhook."
)

// Config tunes delivery.
type Config struct {
	// MaxAttempts bounds the POSTs of one change (default 10).
	MaxAttempts int
	// BaseDelay is the wait after the first failure, doubling after each
	// (default 1s); MaxDelay caps it (default 5m).
	BaseDelay, MaxDelay time.Duration
	// Timeout bounds one POST, connection to answer (default 10s).
	Timeout time.Duration
	// AllowPrivate lets endpoints be loopback or private addresses.
	AllowPrivate bool
	// Concurrency bounds the POSTs in flight in this mediator (default 64),
	// PerTenant those of one tenant (default 8), PerEndpoint those of one
	// tenant to one endpoint host and port (default 4). A tenant's slow
	// endpoints take at most PerTenant of the Concurrency slots; the lower
	// PerTenant, the more slow tenants it takes to delay the others, and
	// the longer a tenant's own burst waits.
	Concurrency, PerTenant, PerEndpoint int
	// MaxPending bounds the notifications delivered and not yet settled,
	// across the mediators (the consumer's MaxAckPending, default 1024):
	// those waiting for their turn (held in memory, one goroutine per job)
	// and those waiting for their retry (on the server only).
	MaxPending int
}

func (c *Config) defaults() {
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 10
	}
	if c.BaseDelay <= 0 {
		c.BaseDelay = time.Second
	}
	if c.MaxDelay <= 0 {
		c.MaxDelay = 5 * time.Minute
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 64
	}
	if c.PerTenant <= 0 {
		c.PerTenant = 8
	}
	if c.PerEndpoint <= 0 {
		c.PerEndpoint = 4
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 1024
	}
}

// Secrets returns a tenant's webhook secret: that tenant's own, current as
// of the last change it has seen (see tenants.WebhookSecrets), or an error.
type Secrets func(ctx context.Context, tenant string) (string, error)

// Body renders the notification body of a job (the Cortex front-end renders
// its jobs as MediatorJob); nil renders the /v1 job JSON.
type Body func(job *jobsv1.Job) ([]byte, error)

// Notifier enqueues and delivers notifications.
type Notifier struct {
	js      jetstream.JetStream
	cfg     Config
	secrets Secrets
	body    Body
	client  *http.Client
	now     func() time.Time
	metrics *metrics.Webhooks
}

// New delivers with cfg, signing with the tenant secrets.
func New(js jetstream.JetStream, cfg Config, secrets Secrets, body Body) *Notifier {
	cfg.defaults()
	// Constant, valid instrument names: this cannot fail, and a nil
	// *metrics.Webhooks would only count nothing.
	m, _ := metrics.NewWebhooks()
	return &Notifier{
		js: js, cfg: cfg, secrets: secrets, body: body, now: time.Now, metrics: m,
		client: &http.Client{
			Transport: locator.NewTransport(cfg.AllowPrivate),
			Timeout:   cfg.Timeout,
			// A redirect is an answer, not an instruction: following it
			// would send the signed body somewhere the client never named.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// CheckEndpoint refuses an endpoint that is not an absolute http(s) URL or,
// unless private endpoints are allowed, names a loopback or private address
// (literally, or as localhost). Host names resolving to such addresses are
// refused again at connection time.
func CheckEndpoint(raw string, allowPrivate bool) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return problem.InvalidArgument("job.notification_endpoint", "notification endpoint must be an absolute http(s) URL")
	}
	if allowPrivate {
		return nil
	}
	host := strings.ToLower(u.Hostname())
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return problem.InvalidArgument("job.notification_endpoint", "notification endpoint %s is a loopback address, which this deployment refuses", host)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() || ip.IsMulticast() ||
			netip.MustParsePrefix("100.64.0.0/10").Contains(ip) {
			return problem.InvalidArgument("job.notification_endpoint", "notification endpoint %s is a loopback or private address, which this deployment refuses", ip)
		}
	}
	return nil
}

// Enqueue schedules a notification of job's current state, if it has an
// endpoint. Use it as a statusconsumer change hook.
func (n *Notifier) Enqueue(ctx context.Context, job *jobsv1.Job) error {
	if job.GetNotificationEndpoint() == "" {
		return nil
	}
	if err := bus.Publish(ctx, n.js, subjectPrefix+job.GetId(), msgID(job), job); err != nil {
		return fmt.Errorf("enqueue notification of job %s: %w", job.GetId(), err)
	}
	return nil
}

// msgID is the msg id, and Medius-Event-Id, of the notification of job's
// state: "webhook-<job>-<attempt>-<status>-<progress>[-requeued]", attempt
// that of its latest execution (0 before any), status the enum number, and
// "-requeued" while it waits QUEUED for the retry of a latest execution that
// has ended (lost its worker). The same state always gets the same id, so a
// change applied again (an event redelivered) is notified once.
//
// The suffix keeps the requeue apart from the QUEUED of the restart that
// added that execution (jobapi.RestartJob adds the restart's at once, not at
// dispatch): both are QUEUED at progress 0 on one attempt, so without it the
// stream would drop the news of the restarted attempt's loss as a duplicate
// within its window, and a receiver de-duplicating on the event id would
// drop it after. The other states a job may pass through again differ in
// attempt already, since each run ends on an attempt of its own: a restart
// adds its execution at once (so a FAILED restarted and FAILED again, even
// before dispatch, names a new attempt), and a job ended while waiting for
// a retry (canceled, its deadline) names the lost attempt, which ended
// nothing else.
func msgID(job *jobsv1.Job) string {
	attempt := int32(0)
	var latest *jobsv1.Execution
	if ex := job.GetExecutions(); len(ex) > 0 {
		latest = ex[len(ex)-1]
		attempt = latest.GetAttempt()
	}
	id := fmt.Sprintf("webhook-%s-%d-%d-%d", job.GetId(), attempt, job.GetStatus(), job.GetProgress())
	if job.GetStatus() == jobsv1.JobStatus_JOB_STATUS_QUEUED && latest != nil && jobstate.IsTerminal(latest.GetStatus()) {
		id += "-requeued"
	}
	return id
}

// Run delivers until ctx ends, then lets the POSTs in flight finish and
// hands the notifications still waiting back to the stream.
func (n *Notifier) Run(ctx context.Context) error {
	// The dispatcher stops once the consumer did: what it hands back then
	// goes to the other mediators, not to this one's draining consumer
	// (which would hand it back again, out of its job's order).
	stop := make(chan struct{})
	d := newDispatcher(ctx, n, stop)
	err := bus.Consume(ctx, n.js, bus.ConsumerConfig{
		Stream: bus.StreamEvents, Durable: Durable, Filter: []string{subjectPrefix + "*"},
		AckWait: n.ackWait(),
		// Every message delivered and unsettled is held by a dispatcher
		// (or waits on the server for its retry): this bounds their memory.
		MaxAckPending: n.cfg.MaxPending,
	}, d.accept)
	close(stop)
	d.wait()
	return err
}

// ackWait is longer than one POST, so a slow endpoint is not raced by a
// redelivery; messages waiting for their turn are kept alive meanwhile.
func (n *Notifier) ackWait() time.Duration { return n.cfg.Timeout + 20*time.Second }

// handle posts the notification msg carries (job) and returns how to
// settle msg: ack once the endpoint took it, hand it back to be retried
// after its backoff, terminate it when it can never be posted or its
// attempts are spent. The caller settles it once it stopped counting it as
// held: the settlement frees its slot on the server, which may deliver the
// next message at once.
func (n *Notifier) handle(ctx context.Context, msg jetstream.Msg, job *jobsv1.Job) (settle func()) {
	attempt := uint64(1)
	if md, err := msg.Metadata(); err == nil {
		attempt = md.NumDelivered
	}
	eventID := msg.Headers().Get(jetstream.MsgIDHeader)
	err := n.Deliver(ctx, job, eventID)
	var do func() error
	switch {
	case err == nil:
		n.metrics.Delivered(ctx, job.GetTenant())
		slog.DebugContext(ctx, "notification delivered", "job", job.GetId(), "attempt", attempt)
		do = msg.Ack
	case bus.IsPermanent(err) || attempt >= uint64(n.cfg.MaxAttempts):
		n.metrics.Failed(ctx, job.GetTenant(), "abandoned")
		slog.WarnContext(ctx, "notification abandoned", "job", job.GetId(), "endpoint", locator.Redact(job.GetNotificationEndpoint()),
			"attempts", attempt, "err", err)
		do = msg.Term
	default:
		delay := n.cfg.BaseDelay << min(attempt-1, 30)
		if delay <= 0 || delay > n.cfg.MaxDelay {
			delay = n.cfg.MaxDelay
		}
		n.metrics.Failed(ctx, job.GetTenant(), "retrying")
		slog.InfoContext(ctx, "notification will be retried", "job", job.GetId(), "attempt", attempt, "after", delay, "err", err)
		do = func() error { return msg.NakWithDelay(delay) }
	}
	return func() {
		if err := do(); err != nil {
			// Unsettled, it comes back after AckWait: at least once still.
			slog.WarnContext(ctx, "settle notification", "job", job.GetId(), "err", err)
		}
	}
}

// Sign returns the Medius-Signature value of body signed at ts.
func Sign(secret string, ts int64, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(m, "%d.", ts)
	m.Write(body)
	return "v1=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a signature header of body at ts (receivers' side; tests).
func Verify(secret, tsHeader, sigHeader string, body []byte) bool {
	ts, err := strconv.ParseInt(tsHeader, 10, 64)
	if err != nil {
		return false
	}
	return hmac.Equal([]byte(Sign(secret, ts, body)), []byte(sigHeader))
}

// Deliver POSTs job to its endpoint once.
func (n *Notifier) Deliver(ctx context.Context, job *jobsv1.Job, eventID string) error {
	secret, err := n.secrets(ctx, job.GetTenant())
	if err != nil {
		return fmt.Errorf("webhook secret of %s: %w", job.GetTenant(), err)
	}
	if secret == "" {
		// A signature anyone can compute proves nothing: better no
		// notification (retried, so fixing the tenant record delivers it).
		return fmt.Errorf("tenant %s has no webhook secret", job.GetTenant())
	}
	var body []byte
	if n.body != nil {
		body, err = n.body(job)
	} else {
		body, err = protojson.MarshalOptions{EmitDefaultValues: true}.Marshal(job)
	}
	if err != nil {
		return fmt.Errorf("render notification: %w", err)
	}
	ts := n.now().Unix()
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, job.GetNotificationEndpoint(), bytes.NewReader(body))
	if err != nil {
		return bus.Permanent(fmt.Errorf("notification request: %w", err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Medius-Webhook/1")
	req.Header.Set(HeaderEventID, eventID)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	req.Header.Set(HeaderSignature, Sign(secret, ts, body))
	resp, err := n.client.Do(req)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("post notification: timed out after %v", n.cfg.Timeout)
		}
		return fmt.Errorf("post notification to %s: %w", locator.Redact(job.GetNotificationEndpoint()), err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("notification endpoint answered %s", resp.Status)
	}
	return nil
}
