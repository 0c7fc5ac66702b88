package processor

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/services/job-processor/internal/record"
	"github.com/medius-platform/medius/services/job-processor/internal/selection"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// noSelector: these tests dispatch nothing.
type noSelector struct{}

func (noSelector) Select(context.Context, selection.Request) (selection.Candidate, error) {
	return selection.Candidate{}, selection.ErrNoCandidate
}

func (noSelector) Candidates(context.Context, selection.Request) ([]selection.Candidate, error) {
	return nil, nil
}

// timerBench is a processor that is not running, whose handlers the test
// calls itself, on NATS, with a clock the test moves.
type timerBench struct {
	ctx context.Context
	js  jetstream.JetStream
	p   *Processor
	now atomic.Int64 // the clock's offset from time.Now
}

func newTimerBench(t *testing.T) *timerBench {
	t.Helper()
	n, err := devenv.StartNATS(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	nc, js, err := bus.Connect(n.URL, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := bus.Provision(ctx, js); err != nil {
		t.Fatal(err)
	}
	tb := &timerBench{ctx: ctx, js: js}
	// The default renewal age; heartbeats are not what these tests are about.
	tb.p, err = New(ctx, Config{JS: js, NC: nc, Selector: noSelector{}, HeartbeatTimeout: 100 * time.Hour,
		Now: func() time.Time { return time.Now().Add(time.Duration(tb.now.Load())) }})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// running seeds the record of job id with attempt 1 running since now.
func (tb *timerBench) running(t *testing.T, id string) {
	t.Helper()
	now := timestamppb.New(tb.p.cfg.Now())
	rec := &jobsv1.Job{Id: id, Tenant: "t1", Profile: "P", Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, CreateTime: now, UpdateTime: now,
		Executions: []*jobsv1.Execution{{Attempt: 1, Service: "probe", Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, DispatchTime: now, StartTime: now}}}
	if err := tb.p.store.create(tb.ctx, id, rec); err != nil {
		t.Fatal(err)
	}
}

// fetch takes the next timer message of job id from the test's own
// consumer, acking none: what a processor holds.
func (tb *timerBench) fetch(t *testing.T, c jetstream.Consumer) jetstream.Msg {
	t.Helper()
	b, err := c.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range b.Messages() {
		return m
	}
	t.Fatalf("no timer message: %v", b.Error())
	return nil
}

func (tb *timerBench) stored(t *testing.T, id string) uint64 {
	t.Helper()
	s, err := tb.js.Stream(tb.ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(tb.ctx, jetstream.WithSubjectFilter(SubjectTimer(id)))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[SubjectTimer(id)]
}

// A timer older than the default renewal age is renewed, one generation
// on, and its redelivery (the process died after publishing the renewal,
// before acking) publishes nothing more. A young one is only re-armed.
func TestTimerRenewalRedeliveredIsOne(t *testing.T) {
	tb := newTimerBench(t)
	const id = "job-1"
	tb.running(t, id)
	if _, err := tb.p.publishAll(tb.ctx, timerMsg(id, 1, 0, 0)); err != nil {
		t.Fatal(err)
	}
	c, err := tb.js.CreateConsumer(tb.ctx, bus.StreamEvents, jetstream.ConsumerConfig{FilterSubject: SubjectTimer(id), AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	first := tb.fetch(t, c)

	err = tb.p.HandleTimer(tb.ctx, first)
	if err == nil {
		t.Fatal("a young timer was let go (acked), want it re-armed")
	}
	if n := tb.stored(t, id); n != 1 {
		t.Fatalf("%d timer messages after checking a young timer, want 1", n)
	}

	// Two days on (well past DefaultTimerRenewAge), the same message is
	// delivered again: it is renewed, and once more after a crash.
	tb.now.Store(int64(48 * time.Hour))
	for range 2 {
		if err := tb.p.HandleTimer(tb.ctx, first); err != nil {
			t.Fatalf("old timer: %v, want it renewed and acked", err)
		}
	}
	if n := tb.stored(t, id); n != 2 {
		t.Fatalf("%d timer messages after renewing one twice, want 2", n)
	}
	if err := first.Ack(); err != nil {
		t.Fatal(err)
	}
	renewed := tb.fetch(t, c)
	if got, want := renewed.Headers().Get(jetstream.MsgIDHeader), "timer-job-1-1-r1"; got != want {
		t.Fatalf("renewal msg id %q, want %q", got, want)
	}
	var tm eventsv1.ExecutionTimer
	if err := proto.Unmarshal(renewed.Data(), &tm); err != nil || tm.GetJobId() != id || tm.GetAttempt() != 1 {
		t.Fatalf("renewal = %v, %v", &tm, err)
	}
	if d, err := time.ParseDuration(renewed.Headers().Get(headerFirstCheck)); err != nil || d <= 0 {
		t.Fatalf("renewal's first check %q, want the wait of the timer it replaces", renewed.Headers().Get(headerFirstCheck))
	}
	// The renewal is young (the clock back to the stream's, which stamped
	// it): re-armed, not renewed again.
	tb.now.Store(0)
	if err := tb.p.HandleTimer(tb.ctx, renewed); err == nil {
		t.Fatal("a fresh renewal was let go (acked), want it re-armed")
	}
	// Aged in turn, it makes generation 2.
	tb.now.Store(int64(96 * time.Hour))
	if err := tb.p.HandleTimer(tb.ctx, renewed); err != nil {
		t.Fatalf("old renewal: %v", err)
	}
	if err := renewed.Ack(); err != nil {
		t.Fatal(err)
	}
	if got := tb.fetch(t, c).Headers().Get(jetstream.MsgIDHeader); got != "timer-job-1-1-r2" {
		t.Fatalf("second renewal msg id %q", got)
	}
}

// Withdrawing a lost attempt's work item never removes a later attempt's,
// which a retry on the same service puts on the same subject.
func TestWithdrawAttemptSparesLaterAttempt(t *testing.T) {
	tb := newTimerBench(t)
	const id = "job-w"
	work, err := tb.js.Stream(tb.ctx, bus.StreamWork)
	if err != nil {
		t.Fatal(err)
	}
	count := func() uint64 {
		info, err := work.Info(tb.ctx, jetstream.WithSubjectFilter(bus.SubjectWork("probe", id)))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	put := func(attempt int32) {
		rec := &jobsv1.Job{Id: id, Executions: []*jobsv1.Execution{{Attempt: attempt, Service: "probe"}}}
		if err := bus.Publish(tb.ctx, tb.js, bus.SubjectWork("probe", id), record.WorkMsgID(rec), record.WorkItem(rec)); err != nil {
			t.Fatal(err)
		}
	}

	put(1)
	if err := tb.p.withdrawAttempt(tb.ctx, "probe", id, 1); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Fatalf("%d items left after withdrawing attempt 1's", n)
	}
	put(2) // the retry, dispatched by another check meanwhile
	if err := tb.p.withdrawAttempt(tb.ctx, "probe", id, 1); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("withdrawing attempt 1 left %d items, want attempt 2's", n)
	}
	if err := tb.p.withdrawAttempt(tb.ctx, "probe", id, 2); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Fatalf("%d items left after withdrawing attempt 2's", n)
	}
}
