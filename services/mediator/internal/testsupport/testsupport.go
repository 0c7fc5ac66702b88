// Package testsupport gives the mediator's tests real infrastructure (NATS
// JetStream and etcd from pkg/devenv) and poll-until helpers. Only tests
// import it.
package testsupport

import (
	"context"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// Env is real NATS (provisioned) and etcd with clients.
type Env struct {
	*devenv.Env
	NC      *nats.Conn
	JS      jetstream.JetStream
	Jobs    jetstream.KeyValue
	EtcdCli *clientv3.Client
}

// Start starts NATS and etcd for t, provisions the streams and buckets and
// connects clients; all are closed when t ends.
func Start(t testing.TB) *Env {
	t.Helper()
	env := devenv.Start(t)
	nc, js, err := bus.Connect(env.NATS.URL, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := bus.Provision(ctx, js); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, bus.BucketJobs)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: env.Etcd.Endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return &Env{Env: env, NC: nc, JS: js, Jobs: kv, EtcdCli: cli}
}

// Eventually polls cond every 20ms until it holds, failing t after timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Events reads the events published on subject, from the start of the stream.
type Events struct {
	t    testing.TB
	cons jetstream.Consumer
}

// WatchEvents starts reading subject on the events stream.
func (e *Env) WatchEvents(t testing.TB, subject string) *Events {
	t.Helper()
	cons, err := e.JS.OrderedConsumer(context.Background(), bus.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	return &Events{t: t, cons: cons}
}

// Next decodes the next event into m and returns its msg id, failing the
// test if none comes within 10s.
func (ev *Events) Next(m proto.Message) string {
	ev.t.Helper()
	msg, err := ev.cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		ev.t.Fatalf("no event: %v", err)
	}
	if err := proto.Unmarshal(msg.Data(), m); err != nil {
		ev.t.Fatalf("decode event: %v", err)
	}
	return msg.Headers().Get(jetstream.MsgIDHeader)
}

// None checks no further event arrives within wait.
func (ev *Events) None(wait time.Duration) {
	ev.t.Helper()
	if msg, err := ev.cons.Next(jetstream.FetchMaxWait(wait)); err == nil {
		ev.t.Fatalf("unexpected event on %s", msg.Subject())
	}
}
