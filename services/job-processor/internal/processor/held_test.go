package processor_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/job-processor/internal/processor"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func scheduledDelay(d time.Duration) func(*processor.Config) {
	return func(c *processor.Config) { c.ScheduledDelay = d }
}

// A job that ends within the delay is never announced SCHEDULED: its end,
// with the execution, is the mediator's first news of it.
func TestShortJobIsNotAnnouncedScheduled(t *testing.T) {
	const delay = 2 * time.Second
	b := setup(t, oneService(), time.Minute, scheduledDelay(delay))
	b.create(t, "job-1")
	b.workItem(t, "probe")
	b.exec(t, update("job-1", 1, completed, 100))
	evs := b.waitStatuses(t, "job-1", "COMPLETED")
	if ex := evs[0].GetExecution(); ex.GetAttempt() != 1 || ex.GetService() != "probe" || ex.GetDispatchTime() == nil {
		t.Errorf("COMPLETED carries execution %v, want attempt 1 on probe with its dispatch time", ex)
	}
	time.Sleep(delay + 500*time.Millisecond) // the held SCHEDULED would be due by now
	b.waitStatuses(t, "job-1", "COMPLETED")
}

// A job still SCHEDULED when the delay has passed is announced then.
func TestWaitingJobIsAnnouncedScheduledAfterTheDelay(t *testing.T) {
	const delay = 300 * time.Millisecond
	b := setup(t, oneService(), time.Minute, scheduledDelay(delay))
	b.create(t, "job-1")
	evs := b.waitStatuses(t, "job-1", "SCHEDULED")
	msg, err := b.events.GetLastMsgForSubject(b.ctx, bus.SubjectJobStatus("job-1"))
	if err != nil {
		t.Fatal(err)
	}
	dispatched := evs[0].GetExecution().GetDispatchTime().AsTime()
	if held := msg.Time.Sub(dispatched); held < delay {
		t.Errorf("SCHEDULED stored %s after the dispatch, want at least the delay %s", held, delay)
	}
}

// A negative delay announces SCHEDULED with the dispatch, as before.
func TestNegativeScheduledDelayAnnouncesAtOnce(t *testing.T) {
	b := setup(t, oneService(), time.Minute, scheduledDelay(-1))
	b.create(t, "job-1")
	evs := b.waitStatuses(t, "job-1", "SCHEDULED")
	msg, err := b.events.GetLastMsgForSubject(b.ctx, bus.SubjectJobStatus("job-1"))
	if err != nil {
		t.Fatal(err)
	}
	// Stored before the record's write was even acknowledged; far below
	// the default delay whatever the machine.
	if held := msg.Time.Sub(evs[0].GetExecution().GetDispatchTime().AsTime()); held >= processor.DefaultScheduledDelay {
		t.Errorf("SCHEDULED stored %s after the dispatch, want it sent with the dispatch", held)
	}
}

// A processor that stops announces what it holds: a job waiting in its
// service's queue is not left NEW in the mediator's eyes until the sweep.
func TestStoppingProcessorAnnouncesWhatItHolds(t *testing.T) {
	b := setup(t, oneService(), time.Minute, scheduledDelay(time.Hour))
	b.create(t, "job-1")
	b.workItem(t, "probe")
	if got := b.statuses(t, "job-1"); len(got) != 0 {
		t.Fatalf("announced %q within an hour's delay", names(got))
	}
	b.stop()
	b.waitStatuses(t, "job-1", "SCHEDULED")
}

// A held SCHEDULED goes out only as the job's first announcement: one
// another replica's news has overtaken (its worker's report went there) is
// dropped, not sent after it.
func TestHeldScheduledOvertakenElsewhereIsDropped(t *testing.T) {
	const delay = time.Second
	b := setup(t, oneService(), time.Minute, scheduledDelay(delay))
	b.create(t, "job-1")
	b.workItem(t, "probe")
	// The job's end, as another replica announces it.
	b.publish(t, bus.SubjectJobStatus("job-1"), "status-job-1-1-COMPLETED",
		&eventsv1.JobStatusChanged{JobId: "job-1", Status: completed, Progress: 100})
	b.waitStatuses(t, "job-1", "COMPLETED")
	time.Sleep(delay + 500*time.Millisecond) // the held SCHEDULED falls due
	b.waitStatuses(t, "job-1", "COMPLETED")
}

// A replica killed while it holds a job's SCHEDULED loses nothing: the
// JobCreated that dispatched the job is acknowledged only once that
// announcement is settled, so another replica gets it after the ack wait
// and announces the job, instead of the mediator showing it NEW until its
// worker reports (behind a long queue, hours).
func TestHeldScheduledOfAKilledReplicaIsAnnouncedByAnother(t *testing.T) {
	var doomed *nats.Conn
	b := setup(t, oneService(), time.Minute, scheduledDelay(time.Hour), func(c *processor.Config) {
		var err error
		if doomed, c.JS, err = bus.Connect(c.NC.ConnectedUrl(), "doomed"); err != nil {
			t.Fatal(err)
		}
		c.NC = doomed
	})
	b.create(t, "job-1")
	b.workItem(t, "probe")
	if got := b.statuses(t, "job-1"); len(got) != 0 {
		t.Fatalf("announced %q within an hour's delay", names(got))
	}
	doomed.Close() // killed: nothing it holds goes out, nothing is acknowledged
	b.stop()
	b.run(t, oneService(), time.Minute)
	b.waitStatuses(t, "job-1", "SCHEDULED")
}

// lateFailingWork fails the first work item published through it, late: its
// ack comes back as an error after the delay, as the answer to a publish
// lost in a NATS restart does. Failure injection over the real JetStream.
type lateFailingWork struct {
	jetstream.JetStream
	after time.Duration
	once  sync.Once
}

func (l *lateFailingWork) PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	fail := false
	if _, ok := bus.WorkService(m.Subject); ok {
		l.once.Do(func() { fail = true })
	}
	if !fail {
		return l.JetStream.PublishMsgAsync(m, opts...)
	}
	f := &failedAck{msg: m, ok: make(chan *jetstream.PubAck), err: make(chan error, 1)}
	time.AfterFunc(l.after, func() { f.err <- errors.New("injected: the publish's answer was lost") })
	return f, nil
}

type failedAck struct {
	msg *nats.Msg
	ok  chan *jetstream.PubAck
	err chan error
}

func (f *failedAck) Ok() <-chan *jetstream.PubAck { return f.ok }
func (f *failedAck) Err() <-chan error            { return f.err }
func (f *failedAck) Msg() *nats.Msg               { return f.msg }

// A held SCHEDULED that falls due before its dispatch's publishes are
// answered does not acknowledge the JobCreated: should the work item turn
// out not stored, the JobCreated is delivered again and the item sent then,
// instead of the job waiting SCHEDULED for good with no item anywhere.
func TestHeldScheduledDoesNotSettleAFailedDispatch(t *testing.T) {
	b := setup(t, oneService(), time.Minute, scheduledDelay(200*time.Millisecond), func(c *processor.Config) {
		c.JS = &lateFailingWork{JetStream: c.JS, after: time.Second}
	})
	b.create(t, "job-1")
	b.waitStatuses(t, "job-1", "SCHEDULED") // announced while the item's answer was pending
	if _, msgID := b.workItem(t, "probe"); msgID != "work-job-1-1" {
		t.Fatalf("work item %q, want job-1's attempt 1", msgID)
	}
}
