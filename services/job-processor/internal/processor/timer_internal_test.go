package processor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/services/job-processor/internal/record"
	"github.com/medius-platform/medius/services/job-processor/internal/selection"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
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
	if _, err := tb.p.publishAll(tb.ctx, timerMsg(id, 1, 0, 0, 0)); err != nil {
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

// deliver publishes m on subject and hands back its delivery to a consumer
// of the test's own, as a processor's consumer would get it.
func (tb *timerBench) deliver(t *testing.T, subject string, m proto.Message) jetstream.Msg {
	t.Helper()
	if err := bus.Publish(tb.ctx, tb.js, subject, "", m); err != nil {
		t.Fatal(err)
	}
	c, err := tb.js.CreateConsumer(tb.ctx, bus.StreamEvents, jetstream.ConsumerConfig{FilterSubject: subject,
		AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy})
	if err != nil {
		t.Fatal(err)
	}
	return tb.fetch(t, c)
}

// timerIDs lists the msg ids of job id's timer messages in the stream, in order.
func (tb *timerBench) timerIDs(t *testing.T, id string) []string {
	t.Helper()
	s, err := tb.js.Stream(tb.ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for seq := uint64(1); ; {
		m, err := s.GetMsg(tb.ctx, seq, jetstream.WithGetMsgSubject(SubjectTimer(id)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m.Header.Get(jetstream.MsgIDHeader))
		seq = m.Sequence + 1
	}
}

// A restarted job's deadline is watched again, although the watch started
// with the job is gone (it found the job ended at one of its hourly checks):
// one new watch per restart, however often the restart is delivered, which
// renews under msg ids of its own (not the first run's watch's, which may
// be renewing within the duplicate window) and fails the job at its
// deadline while it waits for a service.
func TestRestartWatchesDeadlineAgain(t *testing.T) {
	tb := newTimerBench(t)
	const id = "job-rd"
	now := tb.p.cfg.Now()
	deadline := now.Add(72 * time.Hour)
	ended := timestamppb.New(now)
	rec := &jobsv1.Job{Id: id, Tenant: "t1", Profile: "P", Status: jobsv1.JobStatus_JOB_STATUS_FAILED, CreateTime: ended, UpdateTime: ended, EndTime: ended,
		Deadline: timestamppb.New(deadline), Error: &jobsv1.Problem{Type: record.ProblemExecutionFailed},
		Executions: []*jobsv1.Execution{{Attempt: 1, Service: "probe", Status: jobsv1.JobStatus_JOB_STATUS_FAILED, DispatchTime: ended, StartTime: ended, EndTime: ended,
			Error: &jobsv1.Problem{Type: record.ProblemExecutionFailed}}}}
	if err := tb.p.store.create(tb.ctx, id, rec); err != nil {
		t.Fatal(err)
	}

	restart := tb.deliver(t, bus.SubjectJobRestart, &eventsv1.JobRestartRequested{JobId: id, Tenant: "t1", Attempts: 1})
	// No service can take it: the restart is retried (redelivered), and
	// each delivery starts the same watch.
	for range 2 {
		if err := tb.p.HandleRestart(tb.ctx, restart); err == nil {
			t.Fatal("restart of a job no service can take was let go (acked), want it retried")
		}
	}
	if got, _, err := tb.p.store.get(tb.ctx, id); err != nil || got.GetStatus() != jobsv1.JobStatus_JOB_STATUS_QUEUED {
		t.Fatalf("restarted record = %v, %v; want QUEUED", got, err)
	}
	ids := tb.timerIDs(t, id)
	if len(ids) != 1 {
		t.Fatalf("timer messages after a restart delivered twice: %q, want one deadline watch", ids)
	}
	timers, err := tb.js.CreateConsumer(tb.ctx, bus.StreamEvents, jetstream.ConsumerConfig{FilterSubject: SubjectTimer(id), AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	watch := tb.fetch(t, timers)
	var tm eventsv1.ExecutionTimer
	if err := proto.Unmarshal(watch.Data(), &tm); err != nil || tm.GetJobId() != id || tm.GetAttempt() != 0 {
		t.Fatalf("restart's timer = %v, %v; want the deadline watch (attempt 0)", &tm, err)
	}
	if err := tb.p.HandleTimer(tb.ctx, watch); err == nil {
		t.Fatal("deadline watch let go (acked) 72h before the deadline, want it re-armed")
	}

	// The first run's watch, had it still been alive, renewing meanwhile.
	if _, err := tb.p.publishAll(tb.ctx, timerMsg(id, 0, 0, 1, time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Two days on, the restart's watch is renewed: stored as a message of
	// its own, not dropped as a duplicate of the first run's renewal.
	tb.now.Store(int64(48 * time.Hour))
	if err := tb.p.HandleTimer(tb.ctx, watch); err != nil {
		t.Fatalf("old deadline watch: %v, want it renewed", err)
	}
	if err := watch.Ack(); err != nil {
		t.Fatal(err)
	}
	ids = tb.timerIDs(t, id)
	if len(ids) != 3 {
		t.Fatalf("timer messages %q, want the restart's watch, the first run's renewal and the restart's watch renewed", ids)
	}
	var renewed jetstream.Msg
	for renewed == nil {
		m := tb.fetch(t, timers)
		if m.Headers().Get(jetstream.MsgIDHeader) == ids[2] {
			renewed = m
		}
	}

	// Past the deadline, the renewed watch fails the waiting job.
	tb.now.Store(int64(73 * time.Hour))
	if err := tb.p.HandleTimer(tb.ctx, renewed); err != nil {
		t.Fatalf("deadline watch past the deadline: %v", err)
	}
	got, _, err := tb.p.store.get(tb.ctx, id)
	if err != nil || got.GetStatus() != jobsv1.JobStatus_JOB_STATUS_FAILED || got.GetError().GetType() != record.ProblemDeadline ||
		len(got.GetExecutions()) != 2 || got.GetExecutions()[1].GetStatus() != jobsv1.JobStatus_JOB_STATUS_FAILED || got.GetExecutions()[1].GetDispatchTime() != nil {
		t.Fatalf("record past the deadline = %v, %v; want FAILED deadline passed, the restart's execution with it", got, err)
	}
}

// A lost attempt's timer that finds its retry's wait for a service over,
// on a record since ended and restarted (by another replica, or while it
// looked: its view was the wait's), does not fail the restarted run for
// want of a service: that run's wait began at its restart, and is its own.
func TestStaleRetryWaitFailsNoRestartedRun(t *testing.T) {
	tb := newTimerBench(t)
	const id = "job-sw"
	tb.running(t, id)
	lost, _, err := tb.p.store.update(tb.ctx, id, func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		return rec, record.WorkerLost(rec, 1, 3, "no heartbeat", tb.p.cfg.Now()), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stale := proto.CloneOf(lost) // the timer's view: the retry waiting

	// Two minutes on (twice the queue timeout), the job is canceled while
	// it waits, and restarted.
	tb.now.Store(int64(2 * time.Minute))
	for _, change := range []func(*jobsv1.Job) record.Outcome{
		func(rec *jobsv1.Job) record.Outcome { return record.Cancel(rec, tb.p.cfg.Now()) },
		func(rec *jobsv1.Job) record.Outcome { return record.Restart(rec, 1, tb.p.cfg.Now()) },
	} {
		if _, _, err := tb.p.store.update(tb.ctx, id, func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
			return rec, change(rec), nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	// The timer dispatches the retry it saw; no service offers the profile.
	if err := tb.p.dispatch(tb.ctx, stale); err != nil {
		t.Fatalf("dispatch of the stale retry: %v", err)
	}
	rec, _, err := tb.p.store.get(tb.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.GetStatus() != jobsv1.JobStatus_JOB_STATUS_QUEUED || len(rec.GetExecutions()) != 2 ||
		rec.GetExecutions()[1].GetStatus() != jobsv1.JobStatus_JOB_STATUS_QUEUED {
		t.Fatalf("restarted record = %v, want QUEUED, its attempt 2 waiting", rec)
	}
}

// profileHook runs its hook at the first profile lookup: the moment a
// timer's check has read the record and not yet acted on it.
type profileHook struct {
	once sync.Once
	hook func()
}

func (h *profileHook) Profile(context.Context, string) (*registryv1.JobProfile, error) {
	h.once.Do(h.hook)
	return nil, nil
}

// An attempt's timer that finds its timeout passed does not end the run a
// restart started while it looked (the attempt it judged was canceled and
// the job restarted meanwhile): that run has its own timeout, from its own
// start.
func TestTimeoutOfEndedAttemptSparesRestartedRun(t *testing.T) {
	tb := newTimerBench(t)
	const id = "job-to"
	now := timestamppb.New(tb.p.cfg.Now())
	rec := &jobsv1.Job{Id: id, Tenant: "t1", Profile: "P", Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, CreateTime: now, UpdateTime: now,
		Timeout:    durationpb.New(time.Minute),
		Executions: []*jobsv1.Execution{{Attempt: 1, Service: "probe", Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, DispatchTime: now, StartTime: now}}}
	if err := tb.p.store.create(tb.ctx, id, rec); err != nil {
		t.Fatal(err)
	}
	tb.now.Store(int64(2 * time.Minute)) // attempt 1's timeout has passed
	tb.p.cfg.Profiles = &profileHook{hook: func() {
		for _, change := range []func(*jobsv1.Job) record.Outcome{
			func(rec *jobsv1.Job) record.Outcome { return record.Cancel(rec, tb.p.cfg.Now()) },
			func(rec *jobsv1.Job) record.Outcome { return record.Restart(rec, 1, tb.p.cfg.Now()) },
		} {
			if _, _, err := tb.p.store.update(tb.ctx, id, func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
				return rec, change(rec), nil
			}); err != nil {
				t.Error(err)
			}
		}
	}}
	msg := tb.deliver(t, SubjectTimer(id), &eventsv1.ExecutionTimer{JobId: id, Attempt: 1})
	if err := tb.p.checkTimer(tb.ctx, msg, &eventsv1.ExecutionTimer{JobId: id, Attempt: 1}); err != nil {
		t.Fatalf("timer check: %v", err)
	}
	got, _, err := tb.p.store.get(tb.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got.GetStatus() != jobsv1.JobStatus_JOB_STATUS_QUEUED || len(got.GetExecutions()) != 2 ||
		got.GetExecutions()[1].GetStatus() != jobsv1.JobStatus_JOB_STATUS_QUEUED || got.GetError() != nil {
		t.Fatalf("restarted record = %v, want QUEUED, its attempt 2 waiting", got)
	}
}

// retrying seeds the record of job id with attempt 1 lost and its retry,
// attempt 2, dispatched (SCHEDULED) on service probe.
func (tb *timerBench) retrying(t *testing.T, id string) {
	t.Helper()
	now := timestamppb.New(tb.p.cfg.Now())
	rec := &jobsv1.Job{Id: id, Tenant: "t1", Profile: "P", Status: jobsv1.JobStatus_JOB_STATUS_SCHEDULED, CreateTime: now, UpdateTime: now,
		Executions: []*jobsv1.Execution{
			{Attempt: 1, Service: "probe", Status: jobsv1.JobStatus_JOB_STATUS_FAILED, DispatchTime: now, StartTime: now, EndTime: now,
				Error: &jobsv1.Problem{Type: record.ProblemWorkerLost}},
			{Attempt: 2, Service: "probe", Status: jobsv1.JobStatus_JOB_STATUS_SCHEDULED, DispatchTime: now}}}
	if err := tb.p.store.create(tb.ctx, id, rec); err != nil {
		t.Fatal(err)
	}
}

// The timer of a lost attempt dispatches the retry. Should the retry's work
// item not go out (a failed publish after its record write), that timer,
// redelivered, is the only thing left to send it: it does, once, and a
// later look finds it queued and sends no second one. The lost attempt's
// worker, cut off but alive, heartbeating meanwhile changes nothing.
func TestLostAttemptsTimerSendsTheRetrysMissingItem(t *testing.T) {
	tb := newTimerBench(t)
	const id = "job-retry"
	tb.retrying(t, id)
	heartbeat, err := bus.NewMsg(tb.ctx, bus.SubjectExecution(id), &eventsv1.ExecutionUpdate{JobId: id, Attempt: 1, Service: "probe",
		InstanceId: "probe-1", Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, Message: record.HeartbeatMessage, Time: timestamppb.New(tb.p.cfg.Now())})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.js.PublishMsg(tb.ctx, heartbeat); err != nil {
		t.Fatal(err)
	}
	items := func() uint64 {
		info, err := tb.p.work.Info(tb.ctx, jetstream.WithSubjectFilter(bus.SubjectWork("probe", id)))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	for look := range 2 {
		msg := tb.deliver(t, SubjectTimer(id), &eventsv1.ExecutionTimer{JobId: id, Attempt: 1})
		if err := tb.p.checkTimer(tb.ctx, msg, &eventsv1.ExecutionTimer{JobId: id, Attempt: 1}); err != nil {
			t.Fatalf("timer check %d: %v", look, err)
		}
		if n := items(); n != 1 {
			t.Fatalf("after look %d: %d work items of the retry, want 1", look, n)
		}
	}
	m, err := tb.p.work.GetLastMsgForSubject(tb.ctx, bus.SubjectWork("probe", id))
	if err != nil {
		t.Fatal(err)
	}
	var item eventsv1.WorkItem
	if err := proto.Unmarshal(m.Data, &item); err != nil || item.GetAttempt() != 2 {
		t.Fatalf("work item %v (%v), want attempt 2's", &item, err)
	}
}

// A retry's item that is gone because its worker took it, ran it and
// reported (a worker acks its item last) is not sent again while that
// report waits to be applied: past the duplicate window it would run the
// attempt twice. The timer looks again later instead. So it does when the
// lost attempt's worker, cut off but alive, heartbeats after that report,
// whatever the processor's clock says.
func TestLostAttemptsTimerSendsNoItemTheRetrysWorkerReportedOn(t *testing.T) {
	for _, tt := range []struct {
		heartbeat bool
		ahead     time.Duration // the processor's clock, past the NATS server's
	}{{false, 0}, {true, 0}, {true, 2 * time.Minute}} {
		heartbeat := tt.heartbeat
		t.Run(fmt.Sprintf("lost worker heartbeats after: %v, clock ahead %s", heartbeat, tt.ahead), func(t *testing.T) {
			tb := newTimerBench(t)
			tb.now.Store(int64(tt.ahead))
			id := fmt.Sprintf("job-retry-done-%v", heartbeat)
			tb.retrying(t, id)
			now := timestamppb.New(tb.p.cfg.Now())
			reports := []*eventsv1.ExecutionUpdate{{JobId: id, Attempt: 2, Service: "probe",
				InstanceId: "probe-2", Status: jobsv1.JobStatus_JOB_STATUS_COMPLETED, Time: now, StartTime: now}}
			if heartbeat {
				reports = append(reports, &eventsv1.ExecutionUpdate{JobId: id, Attempt: 1, Service: "probe",
					InstanceId: "probe-1", Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, Message: record.HeartbeatMessage, Time: now})
			}
			for _, u := range reports {
				report, err := bus.NewMsg(tb.ctx, bus.SubjectExecution(id), u)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tb.js.PublishMsg(tb.ctx, report); err != nil {
					t.Fatal(err)
				}
			}
			// No processor has handled the report: the timer is to look again.
			msg := tb.deliver(t, SubjectTimer(id), &eventsv1.ExecutionTimer{JobId: id, Attempt: 1})
			consumers := tb.consumers(t)
			if err := tb.p.checkTimer(tb.ctx, msg, &eventsv1.ExecutionTimer{JobId: id, Attempt: 1}); err == nil {
				t.Fatal("timer check settled, want it retried until the report is applied")
			}
			if after := tb.consumers(t); after != consumers {
				t.Errorf("%d consumers on the events stream after the look, %d before: the reader of the reports is left behind", after, consumers)
			}
			info, err := tb.p.work.Info(tb.ctx, jetstream.WithSubjectFilter(bus.SubjectWork("probe", id)))
			if err != nil {
				t.Fatal(err)
			}
			if info.State.Msgs != 0 {
				t.Fatalf("%d work items: the retry its worker reported on was sent again", info.State.Msgs)
			}
		})
	}
}

// News of an attempt that is over, from a worker still running it (declared
// lost while only cut off, or holding a stale item), has that worker told to
// stop that attempt alone. And it means that attempt's item was taken: a
// current attempt waiting SCHEDULED without its item (a move whose send
// failed, then the old service came back for the stale item) gets it sent,
// instead of waiting for good.
func TestNewsOfAnEndedAttemptStopsItAndSendsTheCurrentItem(t *testing.T) {
	tb := newTimerBench(t)
	const id = "job-zombie"
	tb.retrying(t, id) // attempt 1 lost, attempt 2 SCHEDULED on probe, its item never sent
	stops := make(chan *eventsv1.JobCancelRequested, 4)
	sub, err := tb.p.cfg.NC.Subscribe(bus.SubjectStopAttempt(id), func(m *nats.Msg) {
		ev := &eventsv1.JobCancelRequested{}
		if proto.Unmarshal(m.Data, ev) == nil {
			stops <- ev
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := tb.p.cfg.NC.Flush(); err != nil {
		t.Fatal(err)
	}

	heartbeat := &eventsv1.ExecutionUpdate{JobId: id, Attempt: 1, Service: "probe", InstanceId: "probe-1",
		Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, Message: record.HeartbeatMessage, Time: timestamppb.New(tb.p.cfg.Now())}
	if err := tb.p.HandleExecution(tb.ctx, tb.deliver(t, bus.SubjectExecution(id), heartbeat)); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-stops:
		if ev.GetAttempts() != 1 || !ev.GetAttemptsKnown() || ev.GetJobId() != id {
			t.Fatalf("stop %v, want attempt 1 of %s", ev, id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the worker running attempt 1 was not told to stop")
	}
	m, err := tb.p.work.GetLastMsgForSubject(tb.ctx, bus.SubjectWork("probe", id))
	if err != nil {
		t.Fatalf("attempt 2's item not sent: %v", err)
	}
	var item eventsv1.WorkItem
	if err := proto.Unmarshal(m.Data, &item); err != nil || item.GetAttempt() != 2 {
		t.Fatalf("work item %v (%v), want attempt 2's", &item, err)
	}
	if rec, _, err := tb.p.store.get(tb.ctx, id); err != nil || rec.GetStatus() != jobsv1.JobStatus_JOB_STATUS_SCHEDULED {
		t.Fatalf("record %v (%v), want attempt 2 still SCHEDULED", rec, err)
	}
}

// consumers counts the consumers of the events stream.
func (tb *timerBench) consumers(t *testing.T) int {
	t.Helper()
	s, err := tb.js.Stream(tb.ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	names := s.ConsumerNames(tb.ctx)
	for range names.Name() {
		n++
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// A later announcement of a job makes its held SCHEDULED moot, but settles it
// (acknowledging the JobCreated that holds it) only once it is stored: one
// that fails leaves the JobCreated to be delivered again and the job to be
// announced then, rather than acknowledged with nothing announced.
func TestAnnouncementSettlesTheHeldScheduledOnlyOnceStored(t *testing.T) {
	tb := newTimerBench(t)
	settled := map[string]int{}
	for _, job := range []string{"job-1", "job-2"} {
		if !tb.p.held.hold(tb.ctx, job, outMsg{subject: bus.SubjectJobStatus(job)}, tb.p.cfg.Now(), func() { settled[job]++ }) {
			t.Fatal("not held")
		}
	}
	// No stream takes this subject: the announcement is not stored.
	if _, err := tb.p.publishAll(tb.ctx, outMsg{subject: "nowhere.job-1", m: &eventsv1.JobStatusChanged{JobId: "job-1"}, announces: "job-1"}); err == nil {
		t.Fatal("published where no stream is")
	}
	if _, err := tb.p.publishAll(tb.ctx, outMsg{subject: bus.SubjectJobStatus("job-2"), msgID: "status-job-2-1-RUNNING-0",
		m: &eventsv1.JobStatusChanged{JobId: "job-2"}, announces: "job-2"}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(settled) != "map[job-2:1]" {
		t.Fatalf("settled %v, want job-2's alone: job-1's announcement was not stored", settled)
	}
	if due := tb.p.held.take(time.Time{}); len(due) != 0 {
		t.Fatalf("%d held SCHEDULED left to go out after a later announcement", len(due))
	}
}
