// Package webhook tells a job's notification endpoint about every status
// change: at least once, signed, retried with exponential backoff up to a
// limit, each request bounded in time.
//
// A change is first published on the events stream (subject
// medius.events.webhook.<job>, msg id per state (see msgID), so a repeated
// change is de-duplicated); the durable consumer "mediator-webhooks" delivers
// it and acks it once the endpoint answered 2xx, or once its retry is
// stored: a POST that failed and may be tried again is published anew, same
// body and trace context, on medius.events.webhook-retry.<job> (same
// stream), its headers naming the attempt it is and the time before which
// it must not be tried, and the durable consumer "mediator-webhook-retries"
// delivers it, handing it back until that time. So a mediator crash or an
// endpoint outage only delays the POST, and retries waiting for their time
// take no slot of the first consumer: no one's first attempts wait behind
// anybody's retries. Attempts are counted in the retries' headers: a
// notification handed back on shutdown, or redelivered, spends none (one
// redelivered after its POST, its mediator dead before settling it, is
// posted again as the same attempt).
//
// Each POST carries the job as JSON and these headers:
//
//	Medius-Event-Id:   unique per change, the same on its retries (receivers de-duplicate on it)
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
// it (a due retry takes its turn with the job's notifications held by the
// mediator it came to). Different jobs' notifications are posted in
// parallel: at most Config.Concurrency at once per mediator, of which at most
// Config.PerTenant for one tenant and Config.PerEndpoint for one tenant's
// endpoint host. An endpoint that answers slowly (each POST may take
// Config.Timeout, each change is tried up to Config.MaxAttempts times) so
// delays the notifications waiting for it; its tenant's other endpoints
// only once that tenant's slow endpoints take all its PerTenant slots;
// another tenant's only once Concurrency/PerTenant tenants are that slow at
// once. Beyond those, Config.MaxPending bounds the notifications delivered
// and not yet settled (waiting for their turn or being posted) across the
// mediators: a tenant with that many slow notifications queued ahead of
// others' still delays theirs until its backlog falls below it. A failing
// one leaves for its retry once its POST has failed: at once for an
// endpoint that refuses. One that never answers would make each of its
// notifications hold its slot through its turn and a whole Timeout (with
// the defaults, 1,024 held ahead of others took about 43 minutes per
// mediator to drain); a circuit breaker per tenant's endpoint host, in
// each mediator, keeps that short: after Config.BreakAfter (3) of its
// POSTs in a row timed out (quick failures do not count, a success resets
// the count), its notifications whose turn comes are failed at once
// without a POST, each going to its retry as any failed attempt, for a
// cool-down of 3 × Timeout, doubling after each probe that times out too,
// up to MaxDelay. Once the cool-down has passed one POST probes it, the
// others still failing at once; its success closes the breaker. So such
// an endpoint holds others back for about one Timeout per mediator (the
// POSTs that open its breaker), then its backlog leaves for the retries
// within milliseconds, each probe holding one slot for at most a Timeout.
// Its notifications spend their attempts meanwhile: one whose endpoint
// hangs for longer than its retries last (with the defaults, about 8.5
// minutes of backoff) is abandoned, as when each of those attempts was a
// POST timing out. An endpoint that answers slowly but within Timeout is
// not cut off. Config.MaxPendingRetries bounds the retries so, waiting for
// their time included, and every tenant's retries share it: a tenant with
// that many failing notifications delays other tenants' retries (not their
// first attempts) until its own are delivered or abandoned, its breaker
// open or not. Fair shares per tenant would need a consumer per tenant.
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
	"sync"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/metrics"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
)

// Headers of a notification.
const (
	HeaderEventID   = "Medius-Event-Id"
	HeaderTimestamp = "Medius-Timestamp"
	HeaderSignature = "Medius-Signature"
)

// Durable is the delivery consumer of notifications (subjectPrefix),
// DurableRetries that of their retries (retryPrefix).
const (
	Durable        = "mediator-webhooks"
	DurableRetries = "mediator-webhook-retries"
	subjectPrefix  = "medius.events.webhook."
	retryPrefix    = "medius.events.webhook-retry."
)

// Headers of a retry, besides HeaderEventID (the change's, as every
// attempt's) and those of its notification (type, trace context).
const (
	// headerAttempt is the number of the attempt the retry is (2 or more).
	headerAttempt = "Medius-Webhook-Attempt"
	// headerNotBefore is when it may be posted (RFC 3339, UTC).
	headerNotBefore = "Medius-Webhook-Not-Before"
	// headerOrigin is the stream sequence of its notification: its
	// retries' msg ids name it, so they are told apart from another
	// enqueue of the same change.
	headerOrigin = "Medius-Webhook-Origin"
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
	// across the mediators (the notifications consumer's MaxAckPending,
	// default 1024): those waiting for their turn (held in memory, one
	// goroutine per job) or being posted. A failed one leaves it for the
	// retries consumer, as does one failed without a POST because its
	// endpoint host's breaker is open (see BreakAfter).
	MaxPending int
	// MaxPendingRetries bounds the same of retries (the retries consumer's
	// MaxAckPending, default 1024), counting also those waiting for their
	// time (on the server only). Every tenant's retries share it.
	MaxPendingRetries int
	// BreakAfter is how many POSTs in a row to one tenant's endpoint host
	// (the PerEndpoint key) must time out for its circuit breaker to open
	// (default 3): for a cool-down of 3 × Timeout, doubling after each
	// probe that times out too, up to MaxDelay, its notifications are
	// failed without a POST, each going to its retry at once instead of
	// holding its slots, and its consumer's, for a whole Timeout. Then one
	// POST probes it; its success closes the breaker. Only time-outs
	// count: an endpoint that fails quickly holds nothing back.
	BreakAfter int
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
	if c.MaxPendingRetries <= 0 {
		c.MaxPendingRetries = 1024
	}
	if c.BreakAfter <= 0 {
		c.BreakAfter = 3
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
// unless private endpoints are allowed, names an internal address
// (locator.InternalAddr: loopback, private, special-purpose, or a NAT64 or
// 6to4 form of one) literally, or localhost. Host names resolving to such
// addresses are refused at connection time.
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
		// The policy the POST's dial-time check applies, so a literal
		// address refused there is refused here, before the job exists.
		if why := locator.InternalAddr(ip); why != "" {
			return problem.InvalidArgument("job.notification_endpoint", "notification endpoint %s is %s, which this deployment refuses", ip, why)
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
// hands the notifications and retries still waiting back to the stream.
func (n *Notifier) Run(ctx context.Context) error {
	// The dispatcher stops once the consumers did: what it hands back then
	// goes to the other mediators, not to this one's draining consumers
	// (which would hand it back again, out of its job's order).
	stop := make(chan struct{})
	d := newDispatcher(ctx, n, stop)
	consumers := []struct {
		cfg    bus.ConsumerConfig
		handle bus.Handler
	}{{
		bus.ConsumerConfig{
			Stream: bus.StreamEvents, Durable: Durable, Filter: []string{subjectPrefix + "*"},
			AckWait: n.ackWait(),
			// Every message delivered and unsettled is held by a
			// dispatcher: this bounds their memory. A failed one is
			// settled once its retry is published, so retries never hold
			// back anybody's first attempts.
			MaxAckPending: n.cfg.MaxPending,
		},
		d.accept,
	}, {
		bus.ConsumerConfig{
			Stream: bus.StreamEvents, Durable: DurableRetries, Filter: []string{retryPrefix + "*"},
			AckWait: n.ackWait(),
			// Held by a dispatcher, or waiting on the server for their
			// time: every tenant's retries share these.
			MaxAckPending: n.cfg.MaxPendingRetries,
		},
		d.acceptRetry,
	}}
	// One consumer that cannot run stops the other: Run returns.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(consumers))
	var wg sync.WaitGroup
	for i, c := range consumers {
		wg.Go(func() {
			if errs[i] = bus.Consume(cctx, n.js, c.cfg, c.handle); errs[i] != nil {
				cancel()
			}
		})
	}
	wg.Wait()
	close(stop)
	d.wait()
	err := errors.Join(errs...)
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		// Stopped while setting a consumer up: asked to, not a failure.
		return nil
	}
	return err
}

// ackWait is longer than one POST, so a slow endpoint is not raced by a
// redelivery; messages waiting for their turn are kept alive meanwhile.
func (n *Notifier) ackWait() time.Duration { return n.cfg.Timeout + 20*time.Second }

// outcome returns how to settle it, whose attempt ended with err (nil: the
// endpoint took it; an attempt failed without a POST, its endpoint host's
// breaker open, is settled as one whose POST failed): ack it once
// delivered; when it failed and may be tried again, publish its retry, due
// after its backoff, then ack it; terminate it when it can never be posted
// or its attempts are spent. The caller settles it once it stopped counting
// it as held: the settlement frees its slot on the server, which may
// deliver the next message at once.
func (n *Notifier) outcome(ctx context.Context, it item, err error) (settle func()) {
	msg, job, attempt := it.msg, it.job, it.attempt
	var do func() error
	switch {
	case err == nil:
		n.metrics.Delivered(ctx, job.GetTenant())
		slog.DebugContext(ctx, "notification delivered", "job", job.GetId(), "attempt", attempt)
		do = msg.Ack
	case bus.IsPermanent(err) || attempt >= n.cfg.MaxAttempts:
		n.metrics.Failed(ctx, job.GetTenant(), "abandoned")
		slog.WarnContext(ctx, "notification abandoned", "job", job.GetId(), "endpoint", locator.Redact(job.GetNotificationEndpoint()),
			"attempts", attempt, "err", err)
		do = msg.Term
	default:
		delay := n.backoff(attempt)
		n.metrics.Failed(ctx, job.GetTenant(), "retrying")
		slog.InfoContext(ctx, "notification will be retried", "job", job.GetId(), "attempt", attempt, "after", delay, "err", err)
		do = func() error { return n.retry(ctx, it, delay) }
	}
	return func() {
		if err := do(); err != nil {
			// Unsettled, it comes back after AckWait: at least once still.
			slog.WarnContext(ctx, "settle notification", "job", job.GetId(), "err", err)
		}
	}
}

// backoff is how long the retry after attempt waits: BaseDelay, doubling
// with each attempt, up to MaxDelay.
func (n *Notifier) backoff(attempt int) time.Duration {
	delay := n.cfg.BaseDelay << min(attempt-1, 30)
	if delay <= 0 || delay > n.cfg.MaxDelay {
		delay = n.cfg.MaxDelay
	}
	return delay
}

// retry publishes it again as its next attempt, due after delay, on the
// retries' subject, then acks it. The retry's msg id names the change's
// notification and the attempt, so a retry published again (it was not
// acked, the mediator died in between, and it was posted again) is stored
// once within the stream's duplicate window (10 minutes; a redelivery
// comes after AckWait). A retry that cannot be published (the stream
// refusing writes) is handed back to its own consumer instead, to be
// posted again as the same attempt: its deliveries count its attempts
// then, so it is abandoned, its delay doubling meanwhile, as it would have
// been through its retries.
func (n *Notifier) retry(ctx context.Context, it item, delay time.Duration) error {
	next := it.attempt + 1
	h := nats.Header{}
	for k, v := range it.msg.Headers() {
		// Its type and trace context, not the server's headers (msg id).
		if !strings.HasPrefix(k, "Nats-") {
			h[k] = v
		}
	}
	h.Set(HeaderEventID, it.eventID)
	h.Set(headerAttempt, strconv.Itoa(next))
	h.Set(headerNotBefore, n.now().Add(delay).UTC().Format(time.RFC3339Nano))
	h.Set(headerOrigin, strconv.FormatUint(it.origin, 10))
	id := fmt.Sprintf("%s-retry-%d-%d", it.eventID, it.origin, next)
	retry := &nats.Msg{Subject: retryPrefix + it.job.GetId(), Data: it.msg.Data(), Header: h}
	if _, err := n.js.PublishMsg(ctx, retry, jetstream.WithMsgID(id)); err != nil {
		tries := it.attempt
		if md, mdErr := it.msg.Metadata(); mdErr == nil {
			tries += int(md.NumDelivered) - 1
		}
		if tries >= n.cfg.MaxAttempts {
			n.metrics.Failed(ctx, it.job.GetTenant(), "abandoned")
			slog.WarnContext(ctx, "notification abandoned: its retry could not be stored", "job", it.job.GetId(),
				"endpoint", locator.Redact(it.job.GetNotificationEndpoint()), "attempts", tries, "err", err)
			return it.msg.Term()
		}
		slog.WarnContext(ctx, "publish notification retry: handed back", "job", it.job.GetId(), "attempt", tries, "err", err)
		return it.msg.NakWithDelay(max(delay, n.backoff(tries)))
	}
	return it.msg.Ack()
}

// retryHeader is what a retry's headers say.
type retryHeader struct {
	attempt   int
	notBefore time.Time
	eventID   string
	origin    uint64
}

func parseRetry(h nats.Header) (retryHeader, error) {
	var r retryHeader
	var err error
	if r.attempt, err = strconv.Atoi(h.Get(headerAttempt)); err != nil || r.attempt < 2 {
		return r, fmt.Errorf("bad %s %q", headerAttempt, h.Get(headerAttempt))
	}
	if r.notBefore, err = time.Parse(time.RFC3339Nano, h.Get(headerNotBefore)); err != nil {
		return r, fmt.Errorf("bad %s: %w", headerNotBefore, err)
	}
	if r.origin, err = strconv.ParseUint(h.Get(headerOrigin), 10, 64); err != nil {
		return r, fmt.Errorf("bad %s: %w", headerOrigin, err)
	}
	if r.eventID = h.Get(HeaderEventID); r.eventID == "" {
		return r, fmt.Errorf("no %s", HeaderEventID)
	}
	return r, nil
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

// bodyDrainWait bounds the read of an answer's body, after its status.
const bodyDrainWait = time.Second

// Deliver POSTs job to its endpoint once. A POST not answered within
// Config.Timeout fails with an error wrapping errTimedOut.
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
			return fmt.Errorf("post notification: %w after %v", errTimedOut, n.cfg.Timeout)
		}
		return fmt.Errorf("post notification to %s: %w", locator.Redact(job.GetNotificationEndpoint()), locator.WithoutURL(err))
	}
	defer resp.Body.Close()
	// The status is the answer. The body is read (a little of it) only so
	// the connection can be used again, and not for long: an endpoint that
	// sends its headers, then holds the body open, would otherwise keep the
	// slot for the whole Timeout and still count as a quick success.
	drain := time.AfterFunc(bodyDrainWait, cancel)
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	drain.Stop()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("notification endpoint answered %s", resp.Status)
	}
	return nil
}
