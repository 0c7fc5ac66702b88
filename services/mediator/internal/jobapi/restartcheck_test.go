package jobapi

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// A mediator process's fate at one of its writes.
type fate int

const (
	// dies before the write is sent: its connection closes, so nothing it
	// does from then on is stored.
	diesBefore fate = iota
	// loses the answer: the write is stored, and reported failed.
	losesAnswer
)

// fatefulJS is a mediator's JetStream whose first publish on subject meets
// fate; the others go through.
type fatefulJS struct {
	jetstream.JetStream
	nc      *nats.Conn
	subject string
	fate    fate
}

func (j *fatefulJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if msg.Subject != j.subject {
		return j.JetStream.PublishMsg(ctx, msg, opts...)
	}
	j.subject = "" // once
	if j.fate == losesAnswer {
		if _, err := j.JetStream.PublishMsg(ctx, msg, opts...); err != nil {
			return nil, err
		}
		return nil, errors.New("no answer")
	}
	j.nc.Close()
	return nil, errors.New("died")
}

// dyingKV is a mediator's jobs bucket whose process dies before its first
// update is sent.
type dyingKV struct {
	jetstream.KeyValue
	nc *nats.Conn
}

func (kv *dyingKV) Update(context.Context, string, []byte, uint64) (uint64, error) {
	kv.nc.Close()
	return 0, errors.New("died")
}

// otherMediator is a mediator process of its own (NATS connection, job
// store, Server) beside f's, its JetStream and jobs bucket as wrap and
// wrapKV make them (nil: as they are).
func otherMediator(t *testing.T, f *fixture, wrap func(jetstream.JetStream, *nats.Conn) jetstream.JetStream,
	wrapKV func(jetstream.KeyValue, *nats.Conn) jetstream.KeyValue) *fixture {
	t.Helper()
	nc, js, err := bus.Connect(f.env.NATS.URL, t.Name()+"-other")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	kv, err := js.KeyValue(context.Background(), bus.BucketJobs)
	if err != nil {
		t.Fatal(err)
	}
	if wrapKV != nil {
		kv = wrapKV(kv, nc)
	}
	if wrap != nil {
		js = wrap(js, nc)
	}
	store := jobstore.New(kv)
	srv, err := New(store, js, f.registry)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{env: f.env, store: store, srv: srv, registry: f.registry}
}

// failedJob is a job that ran once and FAILED, as the mediator and the
// processor record it, and its record's revision.
func failedJob(t *testing.T, f *fixture) (string, uint64) {
	t.Helper()
	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	moveOn(t, f, job.GetId(), jobsv1.JobStatus_JOB_STATUS_FAILED)
	processorRecord(t, f, job.GetId(), 1)
	_, rev, err := f.store.Get(context.Background(), job.GetId())
	if err != nil {
		t.Fatal(err)
	}
	return job.GetId(), rev
}

// restartSweep settles restart checks once 300ms old.
var restartSweep = SweepConfig{Interval: 50 * time.Millisecond, MinAge: 300 * time.Millisecond}

// A mediator that dies between a restart's record write (QUEUED) and its
// announcement does not leave the job QUEUED for good: the sweep announces
// it, under the id the dead one would have used, once, however many
// replicas sweep.
func TestRestartAnnouncedWhenItsMediatorDied(t *testing.T) {
	f := setup(t)
	restarts := f.env.WatchEvents(t, bus.SubjectJobRestart)
	id, rev := failedJob(t, f)
	dying := otherMediator(t, f, func(js jetstream.JetStream, nc *nats.Conn) jetstream.JetStream {
		return &fatefulJS{JetStream: js, nc: nc, subject: bus.SubjectJobRestart, fate: diesBefore}
	}, nil)
	_, _ = dying.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id}) // nobody hears its answer
	if job, _, err := f.store.Get(context.Background(), id); err != nil || job.GetStatus() != jobsv1.JobStatus_JOB_STATUS_QUEUED {
		t.Fatalf("record after the restart's write = %v, %v; want QUEUED", job.GetStatus(), err)
	}

	startSweep(t, f, restartSweep)
	startSweep(t, otherMediator(t, f, nil, nil), restartSweep)
	ev := &eventsv1.JobRestartRequested{}
	if msgID := restarts.Next(ev); msgID != fmt.Sprintf("restart-%s-1-rev%d", id, rev) || ev.GetJobId() != id ||
		ev.GetTenant() != "acme" || ev.GetAttempts() != 1 {
		t.Fatalf("restart announced as %q: %v", msgID, ev)
	}
	restarts.None(time.Second)
	if job, _, err := f.store.Get(context.Background(), id); err != nil || job.GetStatus() != jobsv1.JobStatus_JOB_STATUS_QUEUED {
		t.Fatalf("record = %v, %v; want still QUEUED", job.GetStatus(), err)
	}
}

// An announcement reported failed may have been stored (its answer lost):
// the restart is accepted and the record stays QUEUED, rather than being
// put back to FAILED while the processor runs the job. The sweep's
// announcement of it, under the same id, is not stored twice.
func TestRestartAcceptedWhenAnnouncementsAnswerLost(t *testing.T) {
	f := setup(t)
	restarts := f.env.WatchEvents(t, bus.SubjectJobRestart)
	id, rev := failedJob(t, f)
	other := otherMediator(t, f, func(js jetstream.JetStream, nc *nats.Conn) jetstream.JetStream {
		return &fatefulJS{JetStream: js, nc: nc, subject: bus.SubjectJobRestart, fate: losesAnswer}
	}, nil)
	job, err := other.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id})
	if err != nil || job.GetStatus() != jobsv1.JobStatus_JOB_STATUS_QUEUED {
		t.Fatalf("restart whose announcement's answer was lost = %v, %v; want accepted, QUEUED", job.GetStatus(), err)
	}
	ev := &eventsv1.JobRestartRequested{}
	if msgID := restarts.Next(ev); msgID != fmt.Sprintf("restart-%s-1-rev%d", id, rev) {
		t.Fatalf("restart announced as %q", msgID)
	}

	startSweep(t, f, restartSweep)
	checks, err := f.env.JS.Consumer(context.Background(), bus.StreamEvents, DurableRestartCheck)
	testsupport.Eventually(t, 10*time.Second, "the restart's check settled", func() bool {
		if err != nil {
			checks, err = f.env.JS.Consumer(context.Background(), bus.StreamEvents, DurableRestartCheck)
			return false
		}
		info, ierr := checks.Info(context.Background())
		return ierr == nil && info.Delivered.Consumer >= 2 && info.NumAckPending == 0 && info.NumPending == 0
	})
	restarts.None(200 * time.Millisecond)
	if job, _, err := f.store.Get(context.Background(), id); err != nil || job.GetStatus() != jobsv1.JobStatus_JOB_STATUS_QUEUED {
		t.Fatalf("record = %v, %v; want still QUEUED", job.GetStatus(), err)
	}
}

// A restart whose record write was never answered (its mediator died) may
// still land later, leaving a QUEUED job nobody announces: the sweep fences
// it off by writing the record again, unchanged, on the revision it was
// for, so that it fails. The job stays FAILED, and restarts again.
func TestRestartNeverWrittenIsFencedOff(t *testing.T) {
	f := setup(t)
	restarts := f.env.WatchEvents(t, bus.SubjectJobRestart)
	id, rev := failedJob(t, f)
	before, _, err := f.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	dying := otherMediator(t, f, nil, func(kv jetstream.KeyValue, nc *nats.Conn) jetstream.KeyValue {
		return &dyingKV{KeyValue: kv, nc: nc}
	})
	if _, err := dying.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id}); err == nil {
		t.Fatal("restart without its record write succeeded")
	}

	startSweep(t, f, restartSweep)
	testsupport.Eventually(t, 10*time.Second, "the unwritten restart fenced off", func() bool {
		_, cur, err := f.store.Get(context.Background(), id)
		return err == nil && cur != rev
	})
	job, _, err := f.store.Get(context.Background(), id)
	if err != nil || !proto.Equal(job, before) {
		t.Fatalf("record after the fence = %v, %v; want unchanged %v", job, err, before)
	}
	late := proto.CloneOf(before)
	late.Status = jobsv1.JobStatus_JOB_STATUS_QUEUED
	if _, err := f.store.Update(context.Background(), late, rev); !errors.Is(err, jobstore.ErrConflict) {
		t.Fatalf("the restart's write landing late = %v, want a conflict", err)
	}
	restarts.None(200 * time.Millisecond)

	if _, err := f.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id}); err != nil {
		t.Fatalf("restart after the fence: %v", err)
	}
	ev := &eventsv1.JobRestartRequested{}
	if restarts.Next(ev); ev.GetJobId() != id || ev.GetAttempts() != 1 {
		t.Fatalf("restart announced %v", ev)
	}
}
