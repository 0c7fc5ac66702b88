package webhook_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"github.com/medius-platform/medius/services/mediator/internal/webhook"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
)

// hooks are notification endpoints, each an httptest server (so a host of
// its own), recording every POST and how many are open at once, by
// endpoint and by tenant.
type hooks struct {
	t       *testing.T
	mu      sync.Mutex
	posts   []hookPost // in order of arrival
	open    map[string]int
	maxOpen map[string]int
	gates   []func()
}

type hookPost struct {
	endpoint string
	job      *jobsv1.Job
	eventID  string
	signed   bool // with secret's key
	at       time.Time
	answered bool // the notifier was still waiting for the answer
}

func newHooks(t *testing.T) *hooks {
	h := &hooks{t: t, open: map[string]int{}, maxOpen: map[string]int{}}
	// Before the servers close (they wait for their open POSTs).
	t.Cleanup(h.releaseAll)
	return h
}

// endpoint starts an endpoint whose POSTs answer once answer returns (nil:
// at once), with the status it returns (0: 200), and returns its URL.
func (h *hooks) endpoint(name string, answer func(*jobsv1.Job) int) string {
	if answer == nil {
		return h.endpointCtx(name, nil)
	}
	return h.endpointCtx(name, func(_ context.Context, job *jobsv1.Job) int { return answer(job) })
}

// endpointCtx is endpoint, its answer given the POST's context (done once
// the notifier gave up on it).
func (h *hooks) endpointCtx(name string, answer func(context.Context, *jobsv1.Job) int) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		job := &jobsv1.Job{}
		if err := protojson.Unmarshal(body, job); err != nil {
			h.t.Errorf("%s: notification %s: %v", name, body, err)
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		keys := []string{"endpoint " + name, "tenant " + job.GetTenant()}
		h.mu.Lock()
		i := len(h.posts)
		h.posts = append(h.posts, hookPost{endpoint: name, job: job, eventID: r.Header.Get(webhook.HeaderEventID), at: time.Now(),
			signed: webhook.Verify("whsec", r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature), body)})
		for _, k := range keys {
			h.open[k]++
			h.maxOpen[k] = max(h.maxOpen[k], h.open[k])
		}
		h.mu.Unlock()
		status := 0
		if answer != nil {
			status = answer(r.Context(), job)
		}
		h.mu.Lock()
		for _, k := range keys {
			h.open[k]--
		}
		h.posts[i].answered = r.Context().Err() == nil
		h.mu.Unlock()
		if status != 0 {
			w.WriteHeader(status)
		}
	}))
	h.t.Cleanup(srv.Close)
	return srv.URL + "/hook"
}

// gated starts an endpoint whose POSTs stay open until release is called
// (or the test ends).
func (h *hooks) gated(name string) (url string, release func()) {
	gate := make(chan struct{})
	release = sync.OnceFunc(func() { close(gate) })
	h.mu.Lock()
	h.gates = append(h.gates, release)
	h.mu.Unlock()
	return h.endpoint(name, func(*jobsv1.Job) int { <-gate; return 0 }), release
}

// hanging starts an endpoint that never answers (each POST stays open
// until the notifier gives up on it) until heal is called, and answers at
// once from then on.
func (h *hooks) hanging(name string) (url string, heal func()) {
	var healed atomic.Bool
	url = h.endpointCtx(name, func(ctx context.Context, _ *jobsv1.Job) int {
		if !healed.Load() {
			<-ctx.Done()
		}
		return 0
	})
	return url, func() { healed.Store(true) }
}

func (h *hooks) releaseAll() {
	h.mu.Lock()
	gates := h.gates
	h.mu.Unlock()
	for _, release := range gates {
		release()
	}
}

// arrived returns the POSTs to endpoint so far.
func (h *hooks) arrived(endpoint string) []hookPost {
	h.mu.Lock()
	defer h.mu.Unlock()
	var got []hookPost
	for _, p := range h.posts {
		if p.endpoint == endpoint {
			got = append(got, p)
		}
	}
	return got
}

func (h *hooks) openNow(key string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.open[key]
}

func (h *hooks) mostOpen(key string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.maxOpen[key]
}

// resetMostOpen makes mostOpen count from now on.
func (h *hooks) resetMostOpen(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.maxOpen[key] = h.open[key]
}

// delivered returns, by event id, how many POSTs to endpoint the notifier
// waited for the answer of (it took them as delivered: the endpoints
// answer 200 unless told otherwise).
func (h *hooks) delivered(endpoint string) map[string]int {
	got := map[string]int{}
	for _, p := range h.arrived(endpoint) {
		if p.answered {
			got[p.eventID]++
		}
	}
	return got
}

// checkOrder fails t unless every job's notifications to endpoint arrived
// in the order of their progress (the order they were enqueued), n of them.
func (h *hooks) checkOrder(endpoint string, n int) {
	h.t.Helper()
	got := h.arrived(endpoint)
	if len(got) != n {
		h.t.Fatalf("%d notifications to %s, want %d", len(got), endpoint, n)
	}
	last := map[string]int32{}
	for _, p := range got {
		id := p.job.GetId()
		if prev, ok := last[id]; ok && p.job.GetProgress() <= prev {
			h.t.Fatalf("job %s: notification at %d%% arrived after the one at %d%%", id, p.job.GetProgress(), prev)
		}
		last[id] = p.job.GetProgress()
	}
}

func secret(context.Context, string) (string, error) { return "whsec", nil }

// consumer returns the durable consumer name once a running notifier
// created it.
func consumer(t *testing.T, env *testsupport.Env, name string) jetstream.Consumer {
	t.Helper()
	var c jetstream.Consumer
	testsupport.Eventually(t, 20*time.Second, "consumer "+name, func() bool {
		var err error
		c, err = env.JS.Consumer(context.Background(), bus.StreamEvents, name)
		return err == nil
	})
	return c
}

// enqueue enqueues notifications of job at each progress, in that order.
func enqueue(t *testing.T, n *webhook.Notifier, tenant, id, endpoint string, progress ...int32) {
	t.Helper()
	for _, p := range progress {
		job := &jobsv1.Job{Id: id, Tenant: tenant, NotificationEndpoint: endpoint, Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, Progress: p}
		if err := n.Enqueue(context.Background(), job); err != nil {
			t.Fatalf("enqueue %s at %d%%: %v", id, p, err)
		}
	}
}

// start runs n until stop, which returns once Run has (hooks' gates
// opened first when the test ends, so that Run's POSTs can end).
func start(t *testing.T, n *webhook.Notifier, h *hooks) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	t.Cleanup(func() {
		h.releaseAll()
		stop()
	})
	return stop
}

// An endpoint that takes long to answer delays only the notifications
// posted to it: another tenant's notifications, and its own tenant's to
// another endpoint, arrive while it holds every POST sent to it, although
// they were enqueued after all of its own; and it never has more than
// PerEndpoint POSTs open at once. (The mediator posted one notification at
// a time: they waited for all of the slow endpoint's.)
func TestSlowEndpointDelaysOnlyItsOwnNotifications(t *testing.T) {
	env := testsupport.Start(t)
	h := newHooks(t)
	slow, release := h.gated("slow")
	fast := h.endpoint("fast", nil)
	cfg := webhook.Config{AllowPrivate: true, Timeout: time.Minute, Concurrency: 4, PerTenant: 3, PerEndpoint: 2}
	n := webhook.New(env.JS, cfg, secret, nil)

	for i := range 4 {
		enqueue(t, n, "slowpoke", fmt.Sprintf("slow-%d", i), slow, 10, 20)
	}
	enqueue(t, n, "slowpoke", "slowpoke-fast", fast, 10)
	enqueue(t, n, "acme", "acme-fast", fast, 10)
	start(t, n, h)

	testsupport.Eventually(t, 20*time.Second, "both fast notifications, while the slow endpoint holds PerEndpoint POSTs", func() bool {
		return len(h.arrived("fast")) == 2 && h.openNow("endpoint slow") == cfg.PerEndpoint
	})
	for _, p := range h.arrived("slow") {
		if p.answered {
			t.Fatalf("slow endpoint answered %s before the test let it", p.job.GetId())
		}
	}
	release()
	testsupport.Eventually(t, 20*time.Second, "every slow notification", func() bool {
		return len(h.arrived("slow")) == 8 && h.openNow("endpoint slow") == 0
	})
	h.checkOrder("slow", 8)
	if got := h.mostOpen("endpoint slow"); got > cfg.PerEndpoint {
		t.Fatalf("%d POSTs open at once at the slow endpoint, want at most %d", got, cfg.PerEndpoint)
	}
}

// A tenant whose slow endpoints are on many hosts takes at most PerTenant
// of the mediator's POSTs: another tenant's notification arrives while
// every one of them is held open.
func TestSlowTenantTakesAtMostPerTenantSlots(t *testing.T) {
	env := testsupport.Start(t)
	h := newHooks(t)
	cfg := webhook.Config{AllowPrivate: true, Timeout: time.Minute, Concurrency: 4, PerTenant: 3, PerEndpoint: 2}
	n := webhook.New(env.JS, cfg, secret, nil)
	// Endpoint slots for 6: the tenant's own cap must stop it at 3.
	for e := range 3 {
		url, _ := h.gated(fmt.Sprintf("slow-%d", e))
		for j := range 2 {
			enqueue(t, n, "slowpoke", fmt.Sprintf("slow-%d-%d", e, j), url, 10)
		}
	}
	fast := h.endpoint("fast", nil)
	enqueue(t, n, "acme", "acme-fast", fast, 10)
	start(t, n, h)

	testsupport.Eventually(t, 20*time.Second, "acme's notification while slowpoke holds PerTenant POSTs", func() bool {
		return len(h.arrived("fast")) == 1 && h.openNow("tenant slowpoke") == cfg.PerTenant
	})
	h.releaseAll()
	testsupport.Eventually(t, 20*time.Second, "every slow notification", func() bool {
		return h.openNow("tenant slowpoke") == 0 &&
			len(h.arrived("slow-0"))+len(h.arrived("slow-1"))+len(h.arrived("slow-2")) == 6
	})
	if got := h.mostOpen("tenant slowpoke"); got > cfg.PerTenant {
		t.Fatalf("slowpoke had %d POSTs open at once, want at most %d", got, cfg.PerTenant)
	}
}

// A job's notifications arrive one after the other in the order of its
// changes, while different jobs' are posted in parallel: each job's first
// is held open until all three jobs' first ones arrived, leaving time for a
// later one to overtake it.
func TestJobsNotificationsArriveInOrder(t *testing.T) {
	env := testsupport.Start(t)
	h := newHooks(t)
	const jobs = 3
	var mu sync.Mutex
	firsts := 0
	allFirsts := make(chan struct{})
	url := h.endpoint("ordered", func(job *jobsv1.Job) int {
		if job.GetProgress() != 10 {
			return 0
		}
		mu.Lock()
		if firsts++; firsts == jobs {
			close(allFirsts)
		}
		mu.Unlock()
		select {
		case <-allFirsts:
		case <-time.After(20 * time.Second):
			t.Errorf("job %s: the other jobs' first notifications did not arrive while it was open", job.GetId())
		}
		return 0
	})
	n := webhook.New(env.JS, webhook.Config{AllowPrivate: true}, secret, nil)
	for j := range jobs {
		enqueue(t, n, "acme", fmt.Sprintf("job-%d", j), url, 10, 20, 30, 40, 50)
	}
	start(t, n, h)

	testsupport.Eventually(t, 20*time.Second, "every notification", func() bool {
		return len(h.arrived("ordered")) == jobs*5
	})
	h.checkOrder("ordered", jobs*5)
}

// A mediator that stops lets the POST in flight finish (it is not posted
// again) and hands the notifications still waiting back: another job's at
// once, so another mediator posts it while the first one's POST is still
// open (not after AckWait), and the job's own later one once its POST was
// answered, so it still arrives after it.
func TestStopHandsBackWaitingNotifications(t *testing.T) {
	env := testsupport.Start(t)
	h := newHooks(t)
	slow, release := h.gated("slow")
	cfg := webhook.Config{AllowPrivate: true, Timeout: time.Minute, PerEndpoint: 1}
	first := webhook.New(env.JS, cfg, secret, nil)
	enqueue(t, first, "acme", "job-a", slow, 10, 20)
	stopFirst := start(t, first, h)
	testsupport.Eventually(t, 20*time.Second, "job-a's first notification open", func() bool {
		return h.openNow("endpoint slow") == 1
	})
	// It waits in the first mediator for the endpoint's one slot, held by
	// job-a's.
	enqueue(t, first, "acme", "job-b", slow, 10)
	cons, err := env.JS.Consumer(context.Background(), bus.StreamEvents, webhook.Durable)
	if err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 20*time.Second, "all three notifications handed to the first mediator", func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumAckPending == 3 && info.NumPending == 0
	})

	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		stopFirst()
	}()
	start(t, webhook.New(env.JS, cfg, secret, nil), h)
	testsupport.Eventually(t, 20*time.Second, "job-b's notification posted by the other mediator", func() bool {
		return len(h.arrived("slow")) == 2
	})
	select {
	case <-stopped:
		t.Fatal("the stopped mediator returned before its POST in flight was answered")
	default:
	}
	release()
	<-stopped
	testsupport.Eventually(t, 20*time.Second, "job-a's second notification, posted by the other mediator", func() bool {
		return len(h.arrived("slow")) == 3 && h.openNow("endpoint slow") == 0
	})
	var got []string
	for _, p := range h.arrived("slow") {
		got = append(got, fmt.Sprintf("%s@%d answered=%v", p.job.GetId(), p.job.GetProgress(), p.answered))
	}
	want := []string{"job-a@10 answered=true", "job-b@10 answered=true", "job-a@20 answered=true"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("posts %v, want %v", got, want)
	}
}

// A mediator holding every notification the consumer lets it have
// (MaxPending) takes the next one as soon as it settles one: each job's
// notifications arrive once each, in order. (The mediator counted the
// settled one as held until after its ack, which already freed the
// server's slot: the next one, delivered at once, was refused as "too many
// held" and came back a second later, behind the job's later ones.)
func TestAtMaxPendingTheNextNotificationIsTakenInOrder(t *testing.T) {
	env := testsupport.Start(t)
	h := newHooks(t)
	url := h.endpoint("fast", nil)
	n := webhook.New(env.JS, webhook.Config{AllowPrivate: true, MaxPending: 2}, secret, nil)
	const jobs, each = 3, 200
	for i := range each {
		for j := range jobs {
			enqueue(t, n, "acme", fmt.Sprintf("job-%d", j), url, int32(i+1))
		}
	}
	start(t, n, h)
	testsupport.Eventually(t, 60*time.Second, "every notification", func() bool {
		return len(h.arrived("fast")) >= jobs*each
	})
	h.checkOrder("fast", jobs*each)
}

// A notification redelivered while the mediator still holds it (its
// keep-alive lost, as on a NATS outage longer than AckWait; here AckWait is
// shortened under the running mediator) is posted once, in its job's order:
// a copy waiting for its turn is replaced by the new delivery, one whose
// POST is in flight settles the message for both. (Each copy was queued
// again: posted twice, old states after newer ones.)
func TestRedeliveredWhileHeldIsPostedOnce(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	h := newHooks(t)
	slow, release := h.gated("slow")
	n := webhook.New(env.JS, webhook.Config{AllowPrivate: true, Timeout: time.Minute}, secret, nil)
	enqueue(t, n, "acme", "job-x", slow, 10, 20, 30)
	start(t, n, h)
	testsupport.Eventually(t, 20*time.Second, "job-x's first notification open", func() bool {
		return h.openNow("endpoint slow") == 1
	})

	cons, err := env.JS.Consumer(ctx, bus.StreamEvents, webhook.Durable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	setAckWait := func(d time.Duration) {
		t.Helper()
		cfg := info.Config
		cfg.AckWait = d
		if _, err := env.JS.UpdateConsumer(ctx, bus.StreamEvents, cfg); err != nil {
			t.Fatal(err)
		}
	}
	setAckWait(time.Second)
	testsupport.Eventually(t, 20*time.Second, "all three notifications redelivered while held", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumRedelivered == 3 && info.NumAckPending == 3
	})
	// Redeliveries racing the settlements would only test at-least-once.
	setAckWait(info.Config.AckWait)
	release()

	testsupport.Eventually(t, 20*time.Second, "every notification settled", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0 && info.NumRedelivered == 0
	})
	var got []string
	for _, p := range h.arrived("slow") {
		got = append(got, fmt.Sprintf("%s@%d", p.job.GetId(), p.job.GetProgress()))
	}
	if want := []string{"job-x@10", "job-x@20", "job-x@30"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("posts %v, want %v", got, want)
	}
}

// A tenant whose endpoint fails every notification holds back no one's
// first attempts, however many of its own wait for their retry: acme's
// notification arrives while twice MaxPending of deadbeat's wait a minute
// for theirs. (Waiting on the notifications consumer, they took all of its
// MaxAckPending, shared by every tenant: acme's waited for all of
// deadbeat's retries.)
func TestFailingNotificationsDoNotHoldBackOthers(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	h := newHooks(t)
	dead := h.endpoint("dead", func(*jobsv1.Job) int { return http.StatusServiceUnavailable })
	fast := h.endpoint("fast", nil)
	cfg := webhook.Config{AllowPrivate: true, MaxPending: 4, BaseDelay: time.Minute}
	n := webhook.New(env.JS, cfg, secret, nil)
	failing := 2 * cfg.MaxPending
	for i := range failing {
		enqueue(t, n, "deadbeat", fmt.Sprintf("dead-%d", i), dead, 10)
	}
	enqueue(t, n, "acme", "acme-fast", fast, 10)
	start(t, n, h)

	testsupport.Eventually(t, 20*time.Second, "acme's notification, and each of deadbeat's tried once", func() bool {
		return len(h.arrived("fast")) == 1 && len(h.arrived("dead")) == failing
	})
	retries := consumer(t, env, webhook.DurableRetries)
	testsupport.Eventually(t, 20*time.Second, "deadbeat's retries waiting for their time", func() bool {
		info, err := retries.Info(ctx)
		return err == nil && info.NumAckPending == failing
	})
	if got := len(h.arrived("dead")); got != failing {
		t.Fatalf("deadbeat's endpoint got %d POSTs, want %d (none retried before its time)", got, failing)
	}
}

// A failed notification is tried again after its backoff (BaseDelay,
// doubling, at most MaxDelay) until the endpoint takes it or MaxAttempts
// POSTs failed, every attempt signed and under the change's event id.
func TestRetriesFollowTheBackoffUpToMaxAttempts(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	h := newHooks(t)
	var mu sync.Mutex
	tries := map[string]int{}
	url := h.endpoint("flaky", func(job *jobsv1.Job) int {
		mu.Lock()
		defer mu.Unlock()
		if tries[job.GetId()]++; job.GetId() == "never" || tries[job.GetId()] <= 2 {
			return http.StatusInternalServerError
		}
		return 0
	})
	cfg := webhook.Config{AllowPrivate: true, MaxAttempts: 4, BaseDelay: 100 * time.Millisecond, MaxDelay: 250 * time.Millisecond}
	n := webhook.New(env.JS, cfg, secret, nil)
	enqueue(t, n, "acme", "never", url, 10)
	enqueue(t, n, "acme", "recovers", url, 10)
	start(t, n, h)

	consumers := []jetstream.Consumer{consumer(t, env, webhook.Durable), consumer(t, env, webhook.DurableRetries)}
	testsupport.Eventually(t, 20*time.Second, "every attempt made and settled", func() bool {
		for _, c := range consumers {
			info, err := c.Info(ctx)
			if err != nil || info.NumAckPending != 0 || info.NumPending != 0 {
				return false
			}
		}
		return len(h.arrived("flaky")) >= 7
	})
	posts := map[string][]hookPost{}
	for _, p := range h.arrived("flaky") {
		posts[p.job.GetId()] = append(posts[p.job.GetId()], p)
	}
	delays := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 250 * time.Millisecond}
	for id, want := range map[string]int{"never": cfg.MaxAttempts, "recovers": 3} {
		got := posts[id]
		if len(got) != want {
			t.Fatalf("%s: %d POSTs, want %d", id, len(got), want)
		}
		for i, p := range got {
			if p.eventID == "" || p.eventID != got[0].eventID || !p.signed {
				t.Fatalf("%s: attempt %d has event id %q (first %q), signed %v", id, i+1, p.eventID, got[0].eventID, p.signed)
			}
			if i > 0 && p.at.Sub(got[i-1].at) < delays[i-1] {
				t.Fatalf("%s: attempt %d came %v after the one before, before its backoff %v", id, i+1, p.at.Sub(got[i-1].at), delays[i-1])
			}
		}
	}
}

// A notification handed back on shutdown spends none of its attempts: with
// MaxAttempts 2, the one another mediator takes over is still retried
// after its first POST failed. (The hand-back counted as a delivery, and
// deliveries as attempts: it was abandoned after one POST.)
func TestHandedBackNotificationKeepsItsAttempts(t *testing.T) {
	env := testsupport.Start(t)
	h := newHooks(t)
	gate := make(chan struct{})
	release := sync.OnceFunc(func() { close(gate) })
	h.mu.Lock()
	h.gates = append(h.gates, release)
	h.mu.Unlock()
	failed := false
	url := h.endpoint("slow", func(job *jobsv1.Job) int {
		if job.GetId() == "job-a" {
			<-gate
			return 0
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if !failed {
			failed = true
			return http.StatusServiceUnavailable
		}
		return 0
	})
	cfg := webhook.Config{AllowPrivate: true, Timeout: time.Minute, PerEndpoint: 1, MaxAttempts: 2, BaseDelay: 50 * time.Millisecond}
	first := webhook.New(env.JS, cfg, secret, nil)
	enqueue(t, first, "acme", "job-a", url, 10)
	stopFirst := start(t, first, h)
	testsupport.Eventually(t, 20*time.Second, "job-a's notification open", func() bool {
		return h.openNow("endpoint slow") == 1
	})
	// It waits in the first mediator for the endpoint's one slot.
	enqueue(t, first, "acme", "job-b", url, 10)
	cons, err := env.JS.Consumer(context.Background(), bus.StreamEvents, webhook.Durable)
	if err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 20*time.Second, "both notifications handed to the first mediator", func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumAckPending == 2 && info.NumPending == 0
	})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		stopFirst()
	}()
	start(t, webhook.New(env.JS, cfg, secret, nil), h)
	testsupport.Eventually(t, 20*time.Second, "job-b posted twice by the other mediator", func() bool {
		n := 0
		for _, p := range h.arrived("slow") {
			if p.job.GetId() == "job-b" {
				n++
			}
		}
		return n == 2
	})
	release()
	<-stopped
}

// A failing notification whose retry the stream cannot store (here: it
// refuses new messages, as when its storage is full) is handed back and
// posted again, its deliveries counting its attempts: it is abandoned
// after MaxAttempts POSTs, not posted again and again.
func TestRetryNotStoredStillEndsAfterMaxAttempts(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	h := newHooks(t)
	url := h.endpoint("down", func(*jobsv1.Job) int { return http.StatusServiceUnavailable })
	cfg := webhook.Config{AllowPrivate: true, MaxAttempts: 3, BaseDelay: 50 * time.Millisecond, MaxDelay: 100 * time.Millisecond}
	n := webhook.New(env.JS, cfg, secret, nil)
	enqueue(t, n, "acme", "job-1", url, 10)
	stream, err := env.JS.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	full := info.Config
	full.MaxMsgs, full.Discard = int64(info.State.Msgs), jetstream.DiscardNew
	if _, err := env.JS.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	start(t, n, h)
	main := consumer(t, env, webhook.Durable)
	testsupport.Eventually(t, 20*time.Second, "the notification settled", func() bool {
		ci, err := main.Info(ctx)
		return err == nil && ci.NumAckPending == 0 && ci.NumPending == 0 && len(h.arrived("down")) > 0
	})
	time.Sleep(10 * cfg.MaxDelay) // room for POSTs that should not come
	if got := len(h.arrived("down")); got != cfg.MaxAttempts {
		t.Fatalf("%d POSTs, want %d (MaxAttempts)", got, cfg.MaxAttempts)
	}
}

// settled reports whether both consumers have nothing left to deliver or
// settle.
func settled(consumers ...jetstream.Consumer) bool {
	for _, c := range consumers {
		info, err := c.Info(context.Background())
		if err != nil || info.NumAckPending != 0 || info.NumPending != 0 {
			return false
		}
	}
	return true
}

// checkDeliveredOnce fails t unless each of want's event ids (one per
// change) was delivered to endpoint exactly once, and nothing else was.
func checkDeliveredOnce(t *testing.T, h *hooks, endpoint string, want int) {
	t.Helper()
	got := h.delivered(endpoint)
	if len(got) != want {
		t.Fatalf("%d changes delivered to %s, want %d", len(got), endpoint, want)
	}
	for id, n := range got {
		if n != 1 {
			t.Fatalf("%s delivered %d times", id, n)
		}
	}
}

// An endpoint that never answers holds another tenant's notifications back
// only for its first few POSTs: once BreakAfter of them timed out in a row,
// its notifications are failed without a POST, each going to its retry at
// once, and leave the notifications consumer's MaxPending slots to the
// others. Acme's notification, enqueued behind 40 of hangs', arrives while
// hangs' endpoint has had fewer than 10 POSTs. (Each of hangs' held its
// slot through its turn and a whole Timeout: with 16 held, acme's was
// handed over only once 25 of them had timed out.) Once the endpoint
// answers again, each of hangs' notifications is delivered once: none lost
// while its attempts are not spent.
func TestHangingEndpointDoesNotHoldBackOthers(t *testing.T) {
	env := testsupport.Start(t)
	h := newHooks(t)
	hang, heal := h.hanging("hang")
	hangsBeforeAcme := atomic.Int64{}
	hangsBeforeAcme.Store(-1)
	fast := h.endpoint("fast", func(*jobsv1.Job) int {
		hangsBeforeAcme.CompareAndSwap(-1, int64(len(h.arrived("hang"))))
		return 0
	})
	cfg := webhook.Config{AllowPrivate: true, Timeout: 500 * time.Millisecond, MaxPending: 16,
		BaseDelay: 50 * time.Millisecond, MaxDelay: time.Second, MaxAttempts: 100}
	n := webhook.New(env.JS, cfg, secret, nil)
	const hung = 40
	for i := range hung {
		enqueue(t, n, "hangs", fmt.Sprintf("hang-%d", i), hang, 10)
	}
	enqueue(t, n, "acme", "acme-fast", fast, 10)
	start(t, n, h)

	testsupport.Eventually(t, 60*time.Second, "acme's notification", func() bool {
		return len(h.arrived("fast")) > 0
	})
	t.Logf("acme's notification came after %d POSTs to the endpoint that never answers", hangsBeforeAcme.Load())
	if got := hangsBeforeAcme.Load(); got >= 10 {
		t.Fatalf("acme's notification came after %d POSTs to the endpoint that never answers, want fewer than 10", got)
	}

	heal()
	consumers := []jetstream.Consumer{consumer(t, env, webhook.Durable), consumer(t, env, webhook.DurableRetries)}
	testsupport.Eventually(t, 60*time.Second, "each of hangs' notifications delivered, and nothing left to settle", func() bool {
		return len(h.delivered("hang")) == hung && settled(consumers...)
	})
	checkDeliveredOnce(t, h, "hang", hung)
	checkDeliveredOnce(t, h, "fast", 1)
}

// While an endpoint host's breaker is open it gets one POST at a time, a
// probe once each cool-down has passed, however many of its notifications
// come due meanwhile; the probe that is answered closes it: the
// notifications after it are posted on their first attempt, none needing a
// retry.
func TestOpenBreakerProbesOneAtATimeAndClosesOnSuccess(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	h := newHooks(t)
	hang, heal := h.hanging("hang")
	cfg := webhook.Config{AllowPrivate: true, Timeout: 200 * time.Millisecond, PerEndpoint: 4,
		BaseDelay: 20 * time.Millisecond, MaxDelay: 800 * time.Millisecond, MaxAttempts: 1000}
	n := webhook.New(env.JS, cfg, secret, nil)
	const hung = 20
	for i := range hung {
		enqueue(t, n, "hangs", fmt.Sprintf("hang-%d", i), hang, 10)
	}
	start(t, n, h)
	notifications := consumer(t, env, webhook.Durable)
	// Every first attempt settled, and at most one POST open (one that
	// started before the breaker opened, timing out).
	testsupport.Eventually(t, 20*time.Second, "every first attempt settled", func() bool {
		return settled(notifications) && h.openNow("endpoint hang") <= 1
	})
	h.resetMostOpen("endpoint hang")
	probed := len(h.arrived("hang"))
	testsupport.Eventually(t, 20*time.Second, "three probes", func() bool {
		return len(h.arrived("hang")) >= probed+3
	})
	if got := h.mostOpen("endpoint hang"); got != 1 {
		t.Fatalf("%d POSTs open at once at the endpoint while its breaker was open, want 1", got)
	}

	heal()
	retries := consumer(t, env, webhook.DurableRetries)
	testsupport.Eventually(t, 30*time.Second, "every notification delivered once the endpoint answers", func() bool {
		return len(h.delivered("hang")) == hung && settled(notifications, retries)
	})
	const after = 10
	for i := range after {
		enqueue(t, n, "hangs", fmt.Sprintf("after-%d", i), hang, 10)
	}
	testsupport.Eventually(t, 20*time.Second, "the later notifications delivered", func() bool {
		return len(h.delivered("hang")) == hung+after && settled(notifications, retries)
	})
	checkDeliveredOnce(t, h, "hang", hung+after)
	stream, err := env.JS.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter("medius.events.webhook-retry.>"))
	if err != nil {
		t.Fatal(err)
	}
	for subject, msgs := range info.State.Subjects {
		if strings.HasPrefix(subject, "medius.events.webhook-retry.after-") {
			t.Fatalf("%d retries on %s, of a notification enqueued after the endpoint answered again: want none (breaker closed)", msgs, subject)
		}
	}
}

// Quick failures do not open a breaker: an endpoint that answers 503 at
// once gets every attempt of every notification as a POST (none is failed
// without one), however many fail in a row.
func TestQuickFailuresDoNotOpenTheBreaker(t *testing.T) {
	env := testsupport.Start(t)
	h := newHooks(t)
	dead := h.endpoint("dead", func(*jobsv1.Job) int { return http.StatusServiceUnavailable })
	cfg := webhook.Config{AllowPrivate: true, MaxAttempts: 3, BaseDelay: 20 * time.Millisecond, MaxDelay: 50 * time.Millisecond}
	n := webhook.New(env.JS, cfg, secret, nil)
	const jobs = 10
	for i := range jobs {
		enqueue(t, n, "deadbeat", fmt.Sprintf("dead-%d", i), dead, 10)
	}
	start(t, n, h)
	consumers := []jetstream.Consumer{consumer(t, env, webhook.Durable), consumer(t, env, webhook.DurableRetries)}
	// Enqueued before the consumers were created: they have nothing left
	// once every notification is abandoned.
	testsupport.Eventually(t, 30*time.Second, "every notification abandoned", func() bool {
		return settled(consumers...)
	})
	posts := map[string]int{}
	for _, p := range h.arrived("dead") {
		posts[p.job.GetId()]++
	}
	for i := range jobs {
		if id := fmt.Sprintf("dead-%d", i); posts[id] != cfg.MaxAttempts {
			t.Fatalf("%s: %d POSTs, want %d (MaxAttempts)", id, posts[id], cfg.MaxAttempts)
		}
	}
}

// A notification whose turn comes once its mediator is stopping is handed
// back, spending no attempt, even when its endpoint host's breaker is
// open: another mediator, whose breaker for that host may be closed, or
// this one restarted, posts it as the same attempt. Job-a's second
// notification waits behind its first, whose POST (the endpoint's third
// in a row to time out, in flight when the mediator is told to stop)
// opens the breaker. (It was failed without a POST as its breaker was
// open, publishing a retry as its second attempt.)
func TestStopHandsBackNotificationsOfAnOpenBreaker(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	h := newHooks(t)
	hang, _ := h.hanging("hang")
	cfg := webhook.Config{AllowPrivate: true, Timeout: time.Second, MaxAttempts: 100}
	n := webhook.New(env.JS, cfg, secret, nil)
	stop := start(t, n, h)
	enqueue(t, n, "hangs", "job-x", hang, 10)
	enqueue(t, n, "hangs", "job-y", hang, 10)
	testsupport.Eventually(t, 20*time.Second, "two POSTs open", func() bool {
		return h.openNow("endpoint hang") == 2
	})
	// Its first POST times out last: its time-out opens the breaker.
	enqueue(t, n, "hangs", "job-a", hang, 10, 20)
	testsupport.Eventually(t, 20*time.Second, "job-a's first POST open", func() bool {
		return h.openNow("endpoint hang") == 3
	})
	stop()
	if got := len(h.arrived("hang")); got != 3 {
		t.Fatalf("%d POSTs, want 3 (job-a's second notification was not to be posted)", got)
	}
	stream, err := env.JS.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter("medius.events.webhook-retry.job-a"))
	if err != nil {
		t.Fatal(err)
	}
	// The retry of its first notification, whose POST timed out.
	if got := info.State.Subjects["medius.events.webhook-retry.job-a"]; got != 1 {
		t.Fatalf("%d retries of job-a's notifications, want 1: the one waiting on stop is handed back, not retried", got)
	}
}
