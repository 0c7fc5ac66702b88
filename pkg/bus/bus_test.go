package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	"github.com/medius-platform/medius/pkg/devenv"
)

func setup(t *testing.T) (context.Context, jetstream.JetStream) {
	t.Helper()
	ctx, _, js := setupOn(t, devenv.Start(t))
	return ctx, js
}

func setupOn(t *testing.T, env *devenv.Env) (context.Context, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, js, err := Connect(env.NATS.URL, "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if err := Provision(ctx, js); err != nil {
		t.Fatal(err)
	}
	// Provision is run by every service at start: a second run must succeed.
	if err := Provision(ctx, js); err != nil {
		t.Fatalf("second provision: %v", err)
	}
	return ctx, nc, js
}

func TestPublishDeduplicatesByMessageID(t *testing.T) {
	ctx, js := setup(t)
	ev := &eventsv1.JobCancelRequested{JobId: "j1", Tenant: "t"}
	for i := 0; i < 3; i++ {
		if err := Publish(ctx, js, SubjectJobCancel, "cancel-j1", ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := Publish(ctx, js, SubjectJobCancel, "cancel-j2", &eventsv1.JobCancelRequested{JobId: "j2"}); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("stream holds %d messages, want 2 (same msg id stored once)", info.State.Msgs)
	}
}

func TestConsumeCarriesTraceAndAcks(t *testing.T) {
	ctx, js := setup(t)
	tp := sdktrace.NewTracerProvider()
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})

	pctx, span := tp.Tracer("test").Start(ctx, "publish")
	if err := Publish(pctx, js, SubjectJobCancel, "", &eventsv1.JobCancelRequested{JobId: "traced"}); err != nil {
		t.Fatal(err)
	}
	span.End()

	got := make(chan trace.TraceID, 1)
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Consume(cctx, js, ConsumerConfig{Stream: StreamEvents, Durable: "t-trace", Filter: []string{SubjectJobCancel}},
			func(ctx context.Context, msg jetstream.Msg) error {
				var ev eventsv1.JobCancelRequested
				if err := Decode(msg.Data(), &ev); err != nil {
					return err
				}
				if msg.Headers().Get(HeaderType) != "medius.events.v1.JobCancelRequested" {
					t.Errorf("type header = %q", msg.Headers().Get(HeaderType))
				}
				got <- trace.SpanContextFromContext(ctx).TraceID()
				return nil
			})
	}()
	select {
	case id := <-got:
		if id != span.SpanContext().TraceID() {
			t.Errorf("consumer trace id %s, want publisher's %s", id, span.SpanContext().TraceID())
		}
	case <-ctx.Done():
		t.Fatal("message not consumed")
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Acked: nothing left pending for the durable.
	cons, err := js.Consumer(ctx, StreamEvents, "t-trace")
	if err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, func() error {
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumAckPending != 0 || info.NumPending != 0 {
			return errors.New("message still pending")
		}
		return nil
	})
}

func TestConsumeRetriesTransientAndTerminatesPermanent(t *testing.T) {
	ctx, js := setup(t)
	for _, id := range []string{"flaky", "poison"} {
		if err := Publish(ctx, js, SubjectJobCancel, "", &eventsv1.JobCancelRequested{JobId: id}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	calls := map[string]int{}
	var flakyDone atomic.Bool
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		_ = Consume(cctx, js, ConsumerConfig{Stream: StreamEvents, Durable: "t-retry", Filter: []string{SubjectJobCancel}},
			func(ctx context.Context, msg jetstream.Msg) error {
				var ev eventsv1.JobCancelRequested
				if err := Decode(msg.Data(), &ev); err != nil {
					return err
				}
				mu.Lock()
				calls[ev.JobId]++
				n := calls[ev.JobId]
				mu.Unlock()
				switch ev.JobId {
				case "flaky":
					if n < 3 {
						return errors.New("not yet")
					}
					flakyDone.Store(true)
					return nil
				default:
					return Permanent(errors.New("never"))
				}
			})
	}()
	checkFor(t, 15*time.Second, func() error {
		if !flakyDone.Load() {
			return errors.New("flaky message not handled yet")
		}
		return nil
	})
	// The poison message was seen once and never again.
	time.Sleep(1500 * time.Millisecond) // longer than the nak delay, so a redelivery would show
	mu.Lock()
	defer mu.Unlock()
	if calls["flaky"] != 3 {
		t.Errorf("flaky handled %d times, want 3", calls["flaky"])
	}
	if calls["poison"] != 1 {
		t.Errorf("poison handled %d times, want 1 (terminated)", calls["poison"])
	}
}

func checkFor(t *testing.T, total time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", total, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBackoff(t *testing.T) {
	for n, want := range map[uint64]time.Duration{1: 250 * time.Millisecond, 2: 500 * time.Millisecond, 3: time.Second, 6: 8 * time.Second, 7: 10 * time.Second, 50: 10 * time.Second} {
		if got := backoff(n); got != want {
			t.Errorf("backoff(%d) = %s, want %s", n, got, want)
		}
	}
}

func TestRetryAfterRedeliversAfterItsDelay(t *testing.T) {
	ctx, js := setup(t)
	if err := Publish(ctx, js, SubjectJobCancel, "", &eventsv1.JobCancelRequested{JobId: "later"}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []time.Time
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		_ = Consume(cctx, js, ConsumerConfig{Stream: StreamEvents, Durable: "t-later", Filter: []string{SubjectJobCancel}},
			func(ctx context.Context, msg jetstream.Msg) error {
				mu.Lock()
				defer mu.Unlock()
				seen = append(seen, time.Now())
				if len(seen) == 1 {
					return RetryAfter(700*time.Millisecond, errors.New("no worker yet"))
				}
				return nil
			})
	}()
	checkFor(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) < 2 {
			return errors.New("not redelivered yet")
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if gap := seen[1].Sub(seen[0]); gap < 700*time.Millisecond {
		t.Errorf("redelivered after %s, want at least 700ms", gap)
	}
}

// A message in hand when the service shuts down is finished and acked, not
// failed half-way: its handler's context outlives the consumer's.
func TestShutdownLetsTheHandlerInHandFinish(t *testing.T) {
	ctx, js := setup(t)
	if err := Publish(ctx, js, SubjectJobCancel, "", &eventsv1.JobCancelRequested{JobId: "in-hand"}); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	var handlerErr atomic.Value
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Consume(cctx, js, ConsumerConfig{Stream: StreamEvents, Durable: "t-drain", Filter: []string{SubjectJobCancel}},
			func(hctx context.Context, msg jetstream.Msg) error {
				close(started)
				time.Sleep(300 * time.Millisecond) // shutdown begins meanwhile
				handlerErr.Store(fmt.Sprint(hctx.Err()))
				return hctx.Err()
			})
	}()
	<-started
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := handlerErr.Load(); got != "<nil>" {
		t.Fatalf("handler context at the end: %v, want still live", got)
	}
	cons, err := js.Consumer(ctx, StreamEvents, "t-drain")
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumAckPending != 0 || info.NumPending != 0 || info.NumRedelivered != 0 {
		t.Fatalf("message not acked: %d ack pending, %d pending, %d redelivered", info.NumAckPending, info.NumPending, info.NumRedelivered)
	}
}

// OrderedBySubject: a subject's messages are handled one after the other in
// stream order, different subjects at the same time.
func TestConsumeOrderedBySubject(t *testing.T) {
	ctx, js := setup(t)
	const jobs, each = 8, 25
	for i := range each {
		for j := range jobs {
			id := fmt.Sprintf("job-%d", j)
			if err := Publish(ctx, js, SubjectJobStatus(id), "", &eventsv1.JobStatusChanged{JobId: id, Progress: int32(i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var mu sync.Mutex
	seen := map[string][]int32{}
	busy := map[string]bool{}
	var active, most atomic.Int32
	all := make(chan struct{})
	var total atomic.Int32
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Consume(cctx, js, ConsumerConfig{Stream: StreamEvents, Durable: "t-ordered", Filter: []string{SubjectJobStatusAll},
			Concurrency: 4, OrderedBySubject: true},
			func(_ context.Context, msg jetstream.Msg) error {
				ev := &eventsv1.JobStatusChanged{}
				if err := Decode(msg.Data(), ev); err != nil {
					return err
				}
				mu.Lock()
				if busy[ev.JobId] {
					t.Errorf("two messages of %s handled at once", ev.JobId)
				}
				busy[ev.JobId] = true
				mu.Unlock()
				if n := active.Add(1); n > most.Load() {
					most.Store(n)
				}
				time.Sleep(time.Millisecond)
				active.Add(-1)
				mu.Lock()
				busy[ev.JobId] = false
				seen[ev.JobId] = append(seen[ev.JobId], ev.Progress)
				mu.Unlock()
				if total.Add(1) == jobs*each {
					close(all)
				}
				return nil
			})
	}()
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		t.Fatalf("handled %d of %d", total.Load(), jobs*each)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for id, got := range seen {
		for i, p := range got {
			if p != int32(i) {
				t.Fatalf("%s handled in order %v", id, got)
			}
		}
	}
	if most.Load() < 2 {
		t.Fatalf("at most %d messages handled at once, want subjects in parallel", most.Load())
	}
}

// ConsumeBatches: under backlog a subject's waiting messages reach the
// handler together, in stream order and never mixed with another subject's;
// every message is handled once, and a failed batch comes back whole.
func TestConsumeBatches(t *testing.T) {
	ctx, js := setup(t)
	const each = 15
	subjects := []string{"job-a", "job-b"}
	for i := range each {
		for _, id := range subjects {
			if err := Publish(ctx, js, SubjectJobStatus(id), "", &eventsv1.JobStatusChanged{JobId: id, Progress: int32(i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	cons, err := EnsureConsumer(ctx, js, ConsumerConfig{Stream: StreamEvents, Durable: "t-batches", Filter: []string{SubjectJobStatusAll}})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var calls int
	var failedSubject string
	failed := map[int32]bool{} // progress of the messages of the failed call
	seen := map[string][]int32{}
	handled := map[uint64]int{} // stream sequence -> successful handlings
	release := make(chan struct{})
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		// One lane, so the two subjects wait in the same one.
		done <- ConsumeBatches(cctx, js, ConsumerConfig{Stream: StreamEvents, Durable: "t-batches", Filter: []string{SubjectJobStatusAll}},
			func(_ context.Context, msgs []jetstream.Msg) error {
				mu.Lock()
				calls++
				first := calls == 1
				mu.Unlock()
				if first {
					// Hold the first message until the rest are delivered
					// and waiting behind it; then fail it, to see it again.
					<-release
					mu.Lock()
					defer mu.Unlock()
					failedSubject = msgs[0].Subject()
					for _, msg := range msgs {
						ev := &eventsv1.JobStatusChanged{}
						if err := Decode(msg.Data(), ev); err != nil {
							return err
						}
						failed[ev.Progress] = true
					}
					return errors.New("first call fails")
				}
				var progress []int32
				for _, msg := range msgs {
					if msg.Subject() != msgs[0].Subject() {
						t.Errorf("one call mixes %s and %s", msgs[0].Subject(), msg.Subject())
					}
					ev := &eventsv1.JobStatusChanged{}
					if err := Decode(msg.Data(), ev); err != nil {
						return err
					}
					progress = append(progress, ev.Progress)
				}
				mu.Lock()
				defer mu.Unlock()
				for _, msg := range msgs {
					md, err := msg.Metadata()
					if err != nil {
						return err
					}
					handled[md.Sequence.Stream]++
				}
				seen[msgs[0].Subject()] = append(seen[msgs[0].Subject()], progress...)
				return nil
			})
	}()
	checkFor(t, 10*time.Second, func() error {
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumAckPending != each*len(subjects) {
			return fmt.Errorf("%d of %d delivered", info.NumAckPending, each*len(subjects))
		}
		return nil
	})
	close(release)
	checkFor(t, 20*time.Second, func() error {
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumAckPending != 0 || info.NumPending != 0 {
			return fmt.Errorf("%d pending, %d ack pending", info.NumPending, info.NumAckPending)
		}
		return nil
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != each*len(subjects) {
		t.Fatalf("%d messages handled, want %d", len(handled), each*len(subjects))
	}
	for seq, n := range handled {
		if n != 1 {
			t.Fatalf("message %d handled %d times", seq, n)
		}
	}
	if calls-1 >= each*len(subjects) {
		t.Fatalf("%d calls for %d messages: waiting messages were not taken together", calls-1, each*len(subjects))
	}
	// The failed call's messages came back (in order) after the others of
	// their subject; the others came in order.
	for subject, got := range seen {
		var redelivered, rest []int32
		for _, p := range got {
			if subject == failedSubject && failed[p] {
				redelivered = append(redelivered, p)
			} else {
				rest = append(rest, p)
			}
		}
		for _, ps := range [][]int32{redelivered, rest} {
			for i := 1; i < len(ps); i++ {
				if ps[i] <= ps[i-1] {
					t.Fatalf("%s handled in order %v", subject, got)
				}
			}
		}
	}
	if len(failed) == 0 || len(seen[failedSubject]) != each {
		t.Fatalf("failed call of %s had %d messages; then handled %v", failedSubject, len(failed), seen[failedSubject])
	}
}

// A message its handler keeps (ErrKept) is left unsettled for the handler to
// acknowledge later, and is not redelivered meanwhile; a batch handler
// cannot keep its group: it is handed back and delivered again.
func TestConsumeKeptMessages(t *testing.T) {
	ctx, js := setup(t)
	pending := func(durable string) int {
		t.Helper()
		cons, err := js.Consumer(ctx, StreamEvents, durable)
		if err != nil {
			t.Fatal(err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.NumAckPending
	}
	run := func(durable string, consume func(context.Context) error) {
		t.Helper()
		cctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- consume(cctx) }()
		t.Cleanup(func() {
			stop()
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
	}

	kept := make(chan jetstream.Msg, 4)
	cfg := ConsumerConfig{Stream: StreamEvents, Durable: "t-kept", Filter: []string{SubjectJobCancel}, AckWait: 2 * time.Second}
	run(cfg.Durable, func(ctx context.Context) error {
		return Consume(ctx, js, cfg, func(_ context.Context, msg jetstream.Msg) error {
			kept <- msg
			return ErrKept
		})
	})
	if err := Publish(ctx, js, SubjectJobCancel, "", &eventsv1.JobCancelRequested{JobId: "kept"}); err != nil {
		t.Fatal(err)
	}
	msg := <-kept
	time.Sleep(500 * time.Millisecond) // what the consumer would have settled, it has
	if n := pending(cfg.Durable); n != 1 {
		t.Fatalf("%d messages awaiting their ack, want the kept one", n)
	}
	if err := msg.Ack(); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, func() error {
		if n := pending(cfg.Durable); n != 0 {
			return fmt.Errorf("%d messages awaiting their ack after the handler acked", n)
		}
		return nil
	})
	select {
	case <-kept:
		t.Fatal("a kept message acked by its handler was delivered again")
	case <-time.After(3 * time.Second): // past its ack wait
	}

	batches := make(chan int, 8)
	bcfg := ConsumerConfig{Stream: StreamEvents, Durable: "t-kept-batch", Filter: []string{SubjectJobStatusAll}}
	run(bcfg.Durable, func(ctx context.Context) error {
		return ConsumeBatches(ctx, js, bcfg, func(_ context.Context, msgs []jetstream.Msg) error {
			batches <- len(msgs)
			return ErrKept
		})
	})
	if err := Publish(ctx, js, SubjectJobStatus("j1"), "", &eventsv1.JobStatusChanged{JobId: "j1"}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case <-batches:
		case <-time.After(10 * time.Second):
			t.Fatal("a batch handler's kept message was not handed back and delivered again")
		}
	}
}

// A publish that failed while NATS was away must not be stored once it
// is back: its caller has given up and said so.
func TestPublishFailedDuringOutageDoesNotLandLater(t *testing.T) {
	env := devenv.Start(t)
	ctx, nc, js := setupOn(t, env)

	env.NATS.Shutdown()
	for nc.IsConnected() {
		time.Sleep(10 * time.Millisecond)
	}
	pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	err := Publish(pctx, js, SubjectJobCancel, "cancel-outage", &eventsv1.JobCancelRequested{JobId: "outage", Tenant: "t"})
	pcancel()
	if err == nil {
		t.Fatal("publish while NATS is down succeeded")
	}

	if err := env.NATS.Restart(); err != nil {
		t.Fatal(err)
	}
	for !nc.IsConnected() {
		if ctx.Err() != nil {
			t.Fatal("no reconnect")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A later publish travels after anything the client held back, so
	// once it is stored, the failed one would be too.
	if err := retry(ctx, func() error {
		return Publish(ctx, js, SubjectJobCancel, "cancel-after", &eventsv1.JobCancelRequested{JobId: "after", Tenant: "t"})
	}); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := s.GetLastMsgForSubject(ctx, SubjectJobCancel); err != nil || m.Header.Get(jetstream.MsgIDHeader) != "cancel-after" {
		t.Fatalf("last cancel: %v %v, want cancel-after", m, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(SubjectJobCancel))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[SubjectJobCancel]; n != 1 {
		t.Fatalf("%d cancel events stored, want 1 (the failed publish landed after reconnect)", n)
	}
}
