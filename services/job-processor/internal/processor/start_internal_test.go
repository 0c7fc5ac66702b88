package processor

import (
	"errors"
	"slices"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The announcement that tells the mediator the start an execution took
// after the processor ended it (record.TakeStart) may be lost: its publish
// failed, or the process died, after the record's write. The worker's
// report, redelivered, finds the start taken and announces it then. Reports
// of jobs their worker ended, or canceled while RUNNING (their start came
// with RUNNING), cost nothing more on their first delivery; nor does a
// redelivered end of a job its worker ended.
func TestStartAnnouncedByTheRedeliveredReport(t *testing.T) {
	const (
		canceled  = jobsv1.JobStatus_JOB_STATUS_CANCELED
		completed = jobsv1.JobStatus_JOB_STATUS_COMPLETED
	)
	for _, tt := range []struct {
		name        string
		status      jobsv1.JobStatus // of the record and of the report
		endedBy     string           // "processor" or "worker"
		redelivered bool
		want        []string // msg ids announced
	}{
		{"start taken, its announcement lost: report redelivered", canceled, "processor", true,
			[]string{"status-job-s-1-CANCELED-started"}},
		{"canceled while RUNNING: the worker's CANCELED", canceled, "processor", false,
			[]string{"status-job-s-1-CANCELED"}},
		{"ended by its worker: its end redelivered", completed, "worker", true,
			[]string{"status-job-s-1-COMPLETED"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tb := newTimerBench(t)
			const id = "job-s"
			now := tb.p.cfg.Now()
			started := timestamppb.New(now.Add(-time.Second))
			reported := timestamppb.New(now.Add(-100 * time.Millisecond))
			ended := timestamppb.New(now.Add(-500 * time.Millisecond))
			if tt.endedBy == "worker" {
				ended = reported
			}
			rec := &jobsv1.Job{Id: id, Tenant: "t1", Profile: "P", Status: tt.status, CreateTime: started, UpdateTime: ended, EndTime: ended,
				Executions: []*jobsv1.Execution{{Attempt: 1, Service: "probe", InstanceId: "probe-1", Status: tt.status,
					DispatchTime: started, StartTime: started, EndTime: ended}}}
			if err := tb.p.store.create(tb.ctx, id, rec); err != nil {
				t.Fatal(err)
			}
			msg := tb.report(t, &eventsv1.ExecutionUpdate{JobId: id, Attempt: 1, Service: "probe", InstanceId: "probe-1",
				Status: tt.status, Time: reported, StartTime: started}, tt.redelivered)
			if err := tb.p.HandleExecution(tb.ctx, msg); err != nil {
				t.Fatal(err)
			}
			if got := tb.announced(t, id); !slices.Equal(got, tt.want) {
				t.Errorf("announced %q, want %q", got, tt.want)
			}
		})
	}
}

// report stores u and returns it as delivered to a processor: for the
// second time if redelivered.
func (tb *timerBench) report(t *testing.T, u *eventsv1.ExecutionUpdate, redelivered bool) jetstream.Msg {
	t.Helper()
	subject := bus.SubjectExecution(u.GetJobId())
	if err := bus.Publish(tb.ctx, tb.js, subject, "", u); err != nil {
		t.Fatal(err)
	}
	c, err := tb.js.CreateConsumer(tb.ctx, bus.StreamEvents, jetstream.ConsumerConfig{FilterSubject: subject, AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	msg := tb.fetch(t, c)
	if redelivered {
		if err := msg.Nak(); err != nil {
			t.Fatal(err)
		}
		msg = tb.fetch(t, c)
		if md, err := msg.Metadata(); err != nil || md.NumDelivered != 2 {
			t.Fatalf("report delivered again: %v (%v), want its second delivery", md, err)
		}
	}
	return msg
}

// announced lists the msg ids of job id's announcements in the stream.
func (tb *timerBench) announced(t *testing.T, id string) []string {
	t.Helper()
	s, err := tb.js.Stream(tb.ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for seq := uint64(1); ; {
		m, err := s.GetMsg(tb.ctx, seq, jetstream.WithGetMsgSubject(bus.SubjectJobStatus(id)))
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
