package webhook_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"github.com/medius-platform/medius/services/mediator/internal/webhook"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// receiver records the signature headers and body of each POST.
type receiver struct {
	*httptest.Server
	mu    sync.Mutex
	posts []post
}

type post struct {
	ts, sig string
	body    []byte
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.posts = append(r.posts, post{req.Header.Get(webhook.HeaderTimestamp), req.Header.Get(webhook.HeaderSignature), body})
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) last(t *testing.T) post {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.posts) == 0 {
		t.Fatal("no notification received")
	}
	return r.posts[len(r.posts)-1]
}

func (p post) signedWith(secret string) bool { return webhook.Verify(secret, p.ts, p.sig, p.body) }

// Each tenant's notifications are signed with its own secret, also while
// another tenant's secret rotates, and a rotation stored in etcd signs the
// notifications after it reached the mediator.
func TestDeliverSignsWithTheTenantsCurrentSecret(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	store := tenants.New(env.EtcdCli)
	acme, err := store.CreateTenant(ctx, tenants.Tenant{ID: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	beta, err := store.CreateTenant(ctx, tenants.Tenant{ID: "beta"})
	if err != nil {
		t.Fatal(err)
	}
	secrets := tenants.NewWebhookSecrets(env.EtcdCli, 0)
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = secrets.Run(wctx)
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	recv := newReceiver(t)
	n := webhook.New(env.JS, webhook.Config{AllowPrivate: true}, secrets.Secret, nil)
	deliver := func(tenant string) post {
		t.Helper()
		job := &jobsv1.Job{Id: "job-" + tenant, Tenant: tenant, NotificationEndpoint: recv.URL + "/hook"}
		if err := n.Deliver(ctx, job, "ev-"+tenant); err != nil {
			t.Fatalf("deliver %s: %v", tenant, err)
		}
		p := recv.last(t)
		var got struct{ Tenant string }
		if err := json.Unmarshal(p.body, &got); err != nil || got.Tenant != tenant {
			t.Fatalf("body %s, want tenant %s", p.body, tenant)
		}
		return p
	}
	check := func(tenant, own, other string) {
		t.Helper()
		p := deliver(tenant)
		if !p.signedWith(own) || p.signedWith(other) {
			t.Fatalf("%s's notification not signed with its own secret only", tenant)
		}
	}

	for range 3 {
		check("acme", acme.WebhookSecret, beta.WebhookSecret)
		check("beta", beta.WebhookSecret, acme.WebhookSecret)
	}

	rotated := acme
	rotated.WebhookSecret = "whsec_rotated"
	data, err := json.Marshal(rotated)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.EtcdCli.Put(ctx, tenants.TenantPrefix+"acme", string(data)); err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 10*time.Second, "notification signed with the rotated secret", func() bool {
		return deliver("acme").signedWith("whsec_rotated")
	})
	check("acme", "whsec_rotated", acme.WebhookSecret)
	check("beta", beta.WebhookSecret, "whsec_rotated")
}

// A notification is never signed with an empty secret: it fails (to be
// retried) and nothing is posted.
func TestDeliverRefusesAnEmptySecret(t *testing.T) {
	env := testsupport.Start(t)
	recv := newReceiver(t)
	n := webhook.New(env.JS, webhook.Config{AllowPrivate: true},
		func(context.Context, string) (string, error) { return "", nil }, nil)
	job := &jobsv1.Job{Id: "j", Tenant: "acme", NotificationEndpoint: recv.URL + "/hook"}
	if err := n.Deliver(context.Background(), job, "ev"); err == nil {
		t.Fatal("delivered with an empty secret")
	}
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if len(recv.posts) != 0 {
		t.Fatalf("%d notifications posted unsigned", len(recv.posts))
	}
}

// A failed POST's error, which the mediator logs, names the endpoint
// without its user info and query: endpoints often carry a token there.
// (The HTTP client's error repeated the whole URL, query included.)
func TestDeliverErrorHidesTheEndpointsCredentials(t *testing.T) {
	env := testsupport.Start(t)
	refused := httptest.NewServer(http.NotFoundHandler())
	refused.Close() // nothing listens at its address any more
	n := webhook.New(env.JS, webhook.Config{AllowPrivate: true}, secret, nil)
	endpoint := strings.Replace(refused.URL, "http://", "http://hookuser:hookpass@", 1) + "/hook?token=hooktoken"
	job := &jobsv1.Job{Id: "j", Tenant: "acme", NotificationEndpoint: endpoint}
	err := n.Deliver(context.Background(), job, "ev")
	if err == nil {
		t.Fatal("delivered to a closed port")
	}
	for _, cred := range []string{"hookuser", "hookpass", "hooktoken"} {
		if strings.Contains(err.Error(), cred) {
			t.Fatalf("error %q names %s", err, cred)
		}
	}
}

// Every state a job passes through is notified, however its runs repeat one
// another's shape (a restart's QUEUED, then its attempt's loss and the
// requeue for the retry, both QUEUED at progress 0 on the same attempt; a
// run ended before dispatch, then restarted and ended so again), and each
// once: the status consumer hands a redelivered event's state over again
// (with a new update time), and the stream must not store it twice. The
// states are the mediator's records as its status consumer and RestartJob
// leave them.
func TestEnqueueNotifiesEveryStateOnce(t *testing.T) {
	env := testsupport.Start(t)
	ctx := context.Background()
	n := webhook.New(env.JS, webhook.Config{AllowPrivate: true},
		func(context.Context, string) (string, error) { return "whsec", nil }, nil)
	const (
		queued    = jobsv1.JobStatus_JOB_STATUS_QUEUED
		scheduled = jobsv1.JobStatus_JOB_STATUS_SCHEDULED
		running   = jobsv1.JobStatus_JOB_STATUS_RUNNING
		completed = jobsv1.JobStatus_JOB_STATUS_COMPLETED
		failed    = jobsv1.JobStatus_JOB_STATUS_FAILED
		canceled  = jobsv1.JobStatus_JOB_STATUS_CANCELED
	)
	lost := &jobsv1.Problem{Type: problem.TypePrefix + "worker-lost", Title: "Worker lost"}
	job := &jobsv1.Job{Id: "j-ids", Tenant: "acme", NotificationEndpoint: "http://example.com/hook", Status: queued}
	cur := func() *jobsv1.Execution { return job.Executions[len(job.Executions)-1] }
	set := func(st jobsv1.JobStatus, progress int32, msg string) {
		job.Status, job.Progress, job.StatusMessage = st, progress, msg
	}
	// Steps move job as the mediator's record moves; each leaves a state
	// the client is told about.
	type step struct {
		what string
		do   func()
	}
	restart := step{"restarted", func() {
		set(queued, 0, "restarted")
		job.Executions = append(job.Executions, &jobsv1.Execution{Attempt: int32(len(job.Executions)) + 1, Status: queued, Restarted: true})
	}}
	dispatch := step{"dispatched", func() {
		if len(job.Executions) == 0 || cur().GetStatus() != queued {
			job.Executions = append(job.Executions, &jobsv1.Execution{Attempt: int32(len(job.Executions)) + 1})
		}
		cur().Status, cur().Service = scheduled, "svc"
		set(scheduled, 0, "")
	}}
	run := func(progress int32) step {
		return step{fmt.Sprintf("running at %d", progress), func() {
			cur().Status, cur().Progress = running, progress
			set(running, progress, "")
		}}
	}
	end := func(st jobsv1.JobStatus, progress int32) step {
		return step{"attempt ended " + st.String(), func() {
			cur().Status = st
			set(st, progress, "")
		}}
	}
	loseWorker := step{"worker lost, retrying", func() {
		cur().Status, cur().Error = failed, lost
		set(queued, 0, "worker lost (no heartbeat); retrying")
	}}
	loseWorkerForGood := step{"worker lost, no attempt left", func() {
		cur().Status, cur().Error = failed, lost
		set(failed, 0, "gave up after 1 attempts lost their worker")
	}}
	endJob := func(st jobsv1.JobStatus) step {
		return step{"job ended " + st.String() + " with no attempt running", func() {
			if len(job.Executions) > 0 && cur().GetStatus() == queued {
				cur().Status = st // the attempt a restart added, never dispatched
			}
			set(st, 0, "")
		}}
	}
	steps := []step{
		endJob(failed), // no service, before the first attempt
		restart, endJob(failed),
		restart, dispatch, run(0), run(40), end(failed, 40),
		// The restarted attempt loses its worker: QUEUED at progress 0 on
		// the restart's attempt again.
		restart, dispatch, run(0), loseWorker,
		// Canceled while waiting for the retry; restarted and canceled
		// before dispatch.
		endJob(canceled), restart, endJob(canceled),
		restart, dispatch, loseWorker, dispatch, run(10), end(failed, 10),
		restart, dispatch, loseWorkerForGood,
		restart, dispatch, loseWorker, endJob(failed), // its deadline, while waiting
		restart, dispatch, run(0), run(100), end(completed, 100),
	}

	events := env.WatchEvents(t, "medius.events.webhook."+job.GetId())
	enqueue := func(what string) *jobsv1.Job {
		t.Helper()
		state := proto.CloneOf(job)
		if err := n.Enqueue(ctx, state); err != nil {
			t.Fatalf("enqueue %s: %v", what, err)
		}
		// Redelivered: applied again, the same state with a new write time.
		again := proto.CloneOf(state)
		again.UpdateTime = timestamppb.Now()
		if err := n.Enqueue(ctx, again); err != nil {
			t.Fatalf("enqueue %s again: %v", what, err)
		}
		return state
	}
	want := []*jobsv1.Job{enqueue("created")}
	whats := []string{"created"}
	for _, s := range steps {
		s.do()
		want = append(want, enqueue(s.what))
		whats = append(whats, s.what)
	}

	ids := map[string]string{}
	for i, w := range want {
		got := &jobsv1.Job{}
		id := events.Next(got)
		if !proto.Equal(got, w) {
			t.Fatalf("notification %d is %s %d%% on attempt %d, want %q (%s %d%% on attempt %d): a state lost (its id taken) or stored twice",
				i, got.GetStatus(), got.GetProgress(), len(got.GetExecutions()), whats[i], w.GetStatus(), w.GetProgress(), len(w.GetExecutions()))
		}
		if prev, ok := ids[id]; ok {
			t.Fatalf("%q and %q notified under one id %s", prev, whats[i], id)
		}
		ids[id] = whats[i]
	}
	// Nothing more: no state stored twice (the last one's redelivery
	// included).
	stream, err := env.JS.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	subject := "medius.events.webhook." + job.GetId()
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	if got := info.State.Subjects[subject]; got != uint64(len(want)) {
		t.Fatalf("%d notifications stored for %d states", got, len(want))
	}
}

// An endpoint that answers 200, then holds its body open, is delivered to
// on its status: the notification does not wait the Timeout for the body.
func TestDeliverDoesNotWaitForAStalledBody(t *testing.T) {
	env := testsupport.Start(t)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("ok"))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	n := webhook.New(env.JS, webhook.Config{AllowPrivate: true, Timeout: time.Hour}, secret, nil)
	done := make(chan error, 1)
	go func() {
		done <- n.Deliver(context.Background(), &jobsv1.Job{Id: "j", Tenant: "acme", NotificationEndpoint: srv.URL + "/hook"}, "ev")
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("deliver: %v, want delivered on its 200", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("deliver still waiting for the body of a 200 after 30s (its Timeout is an hour)")
	}
}
