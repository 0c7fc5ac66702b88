package processor_test

import (
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/job-processor/internal/processor"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// A job's first announcement sends its record and work item together; a
// re-announcement (the mediator's sweep, after an outage) of a
// job handled long ago, by a replica that does not remember it, must find
// the record first and send no work again.
func TestReannouncedJobSendsNoWork(t *testing.T) {
	b := setup(t, oneService(), time.Minute)
	b.create(t, "job-1")
	b.waitStatuses(t, "job-1", "SCHEDULED")
	if rec := b.record(t, "job-1"); rec.Status != jobsv1.JobStatus_JOB_STATUS_SCHEDULED || len(rec.Executions) != 1 {
		t.Fatalf("record after the first announcement = %v", rec)
	}
	b.workItem(t, "probe") // stored with the record, on another stream
	if n := b.workCount(t, "probe"); n != 1 {
		t.Fatalf("%d work items after the first announcement, want 1", n)
	}

	// job-2 ended long ago on another replica: its record is there, its
	// work item and msg ids long forgotten.
	b.reannounceHandled(t, &jobsv1.Job{Id: "job-2", Tenant: "t1", Profile: "P", JobType: "AmeJob", Status: completed, Progress: 100,
		CreateTime: timestamppb.New(time.Now().Add(-time.Hour)),
		Executions: []*jobsv1.Execution{{Attempt: 1, Service: "probe", InstanceId: "probe-1", Status: completed}}})
	b.settled(t, processor.DurableCreated)
	if n := b.workCount(t, "probe"); n != 1 {
		t.Errorf("%d work items: the re-announced, completed job-2 was sent again", n)
	}
	if rec := b.record(t, "job-2"); rec.Status != completed || len(rec.Executions) != 1 {
		t.Errorf("record of job-2 after the re-announcement = %v", rec)
	}
}

// A re-announcement that finds the job SCHEDULED, stored long after the
// announcement that dispatched it (past the duplicate windows, where a
// repeated work item is no longer dropped), announces where the job is and
// sends no work: the job's first item may still be queued, and a second
// would run it twice.
func TestReannouncedScheduledJobSendsNoWorkAgain(t *testing.T) {
	b := setup(t, oneService(), time.Minute)
	// Dispatched long ago (by another replica): its record is SCHEDULED,
	// its work item's msg id forgotten by the work stream.
	b.reannounceHandled(t, &jobsv1.Job{Id: "job-3", Tenant: "t1", Profile: "P", JobType: "AmeJob", Status: jobsv1.JobStatus_JOB_STATUS_SCHEDULED,
		CreateTime: timestamppb.New(time.Now().Add(-time.Hour)),
		Executions: []*jobsv1.Execution{{Attempt: 1, Service: "probe", Status: jobsv1.JobStatus_JOB_STATUS_SCHEDULED,
			DispatchTime: timestamppb.New(time.Now().Add(-time.Hour))}}})
	b.waitStatuses(t, "job-3", "SCHEDULED")
	b.settled(t, processor.DurableCreated)
	if n := b.workCount(t, "probe"); n != 0 {
		t.Errorf("%d work items: the re-announced job's work was sent again", n)
	}
}

// A re-announcement that finds a record with no execution yet (made by a
// delivery of the job's that went missing: a consumer made anew) has had no
// work sent: it dispatches the job as any announcement would.
func TestReannouncedUndispatchedJobIsDispatched(t *testing.T) {
	reg := oneService()
	instances := reg.instances
	reg.set(nil, nil) // no service yet
	b := setup(t, reg, time.Minute)
	b.reannounceHandled(t, &jobsv1.Job{Id: "job-4", Tenant: "t1", Profile: "P", JobType: "AmeJob", Status: jobsv1.JobStatus_JOB_STATUS_QUEUED,
		CreateTime: timestamppb.Now()})
	b.waitStatuses(t, "job-4", "QUEUED")
	reg.set(instances, nil) // a worker comes up
	if item, _ := b.workItem(t, "probe"); item.GetJobId() != "job-4" || item.GetAttempt() != 1 {
		t.Fatalf("work item %v, want job-4's attempt 1", item)
	}
}

// An announcement stored long ago and delivered for the first time (its
// consumer made anew replays the stream) takes the path that creates the
// record before sending work: a job done long ago is not sent again, past
// the duplicate window that would have dropped its item.
func TestReplayedAnnouncementSendsNoWork(t *testing.T) {
	b := setup(t, oneService(), time.Minute, clockAhead(2*time.Minute))
	done := &jobsv1.Job{Id: "job-5", Tenant: "t1", Profile: "P", JobType: "AmeJob", Status: completed, Progress: 100,
		CreateTime: timestamppb.New(time.Now().Add(-time.Hour)),
		Executions: []*jobsv1.Execution{{Attempt: 1, Service: "probe", InstanceId: "probe-1", Status: completed}}}
	b.putRecord(t, done)
	b.create(t, "job-5") // as CreateJob published it, an hour ago
	b.waitStatuses(t, "job-5", "COMPLETED")
	b.settled(t, processor.DurableCreated)
	if n := b.workCount(t, "probe"); n != 0 {
		t.Errorf("%d work items: the replayed announcement of a completed job sent its work again", n)
	}
}

// A replayed announcement of a job still waiting in its queue (its item
// sent long ago, past the duplicate window) sends no second item.
func TestReplayedAnnouncementOfAQueuedJobSendsNoSecondItem(t *testing.T) {
	b := setup(t, oneService(), time.Minute, clockAhead(2*time.Minute))
	waiting := &jobsv1.Job{Id: "job-6", Tenant: "t1", Profile: "P", JobType: "AmeJob", Status: jobsv1.JobStatus_JOB_STATUS_SCHEDULED,
		CreateTime: timestamppb.New(time.Now().Add(-time.Hour)),
		Executions: []*jobsv1.Execution{{Attempt: 1, Service: "probe", Status: jobsv1.JobStatus_JOB_STATUS_SCHEDULED,
			DispatchTime: timestamppb.New(time.Now().Add(-time.Hour))}}}
	b.putRecord(t, waiting)
	// Its item, queued an hour ago: its msg id is forgotten.
	b.publish(t, bus.SubjectWork("probe", "job-6"), "", &eventsv1.WorkItem{JobId: "job-6", Attempt: 1, Profile: "P"})
	b.create(t, "job-6")
	b.waitStatuses(t, "job-6", "SCHEDULED")
	b.settled(t, processor.DurableCreated)
	if n := b.workCount(t, "probe"); n != 1 {
		t.Errorf("%d work items: the replay queued the waiting job's item again", n)
	}
}

// A report that came long before its job's record was dropped; when the
// record then shows the job dispatched but its item is gone (taken and
// acked by the worker that reported), the item goes again: the job runs
// twice rather than stays SCHEDULED for good.
func TestDroppedReportLeavesNoJobStranded(t *testing.T) {
	b := setup(t, oneService(), time.Minute, clockAhead(2*time.Minute))
	b.exec(t, update("job-7", 1, completed, 100)) // no record: too old to wait for one
	b.settled(t, processor.DurableExec)
	dispatched := &jobsv1.Job{Id: "job-7", Tenant: "t1", Profile: "P", JobType: "AmeJob", Status: jobsv1.JobStatus_JOB_STATUS_SCHEDULED,
		CreateTime: timestamppb.Now(),
		Executions: []*jobsv1.Execution{{Attempt: 1, Service: "probe", Status: jobsv1.JobStatus_JOB_STATUS_SCHEDULED, DispatchTime: timestamppb.Now()}}}
	b.putRecord(t, dispatched)
	b.create(t, "job-7") // its announcement, redelivered after the crash that lost the item
	if item, _ := b.workItem(t, "probe"); item.GetJobId() != "job-7" || item.GetAttempt() != 1 {
		t.Fatalf("work item %v, want job-7's attempt 1", item)
	}
}

// clockAhead runs the processor's clock d ahead of the NATS server's, so
// every message it reads is at least d old.
func clockAhead(d time.Duration) func(*processor.Config) {
	return func(c *processor.Config) { c.Now = func() time.Time { return time.Now().Add(d) } }
}

// putRecord stores rec as the processor's record of its job, as another
// replica would have.
func (b *bundle) putRecord(t *testing.T, rec *jobsv1.Job) {
	t.Helper()
	data, err := proto.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.kv.Put(b.ctx, rec.Id, data); err != nil {
		t.Fatal(err)
	}
}

// reannounceHandled stores rec as the record of a job another replica
// handled long ago, then publishes a re-announcement of the job, as the
// mediator's sweep does.
func (b *bundle) reannounceHandled(t *testing.T, rec *jobsv1.Job) {
	t.Helper()
	b.putRecord(t, rec)
	job := &jobsv1.Job{Id: rec.Id, Tenant: rec.Tenant, Profile: rec.Profile, JobType: rec.JobType, Status: jobsv1.JobStatus_JOB_STATUS_NEW, CreateTime: rec.CreateTime}
	data, err := proto.Marshal(&eventsv1.JobCreated{Job: job})
	if err != nil {
		t.Fatal(err)
	}
	m := &nats.Msg{Subject: bus.SubjectJobCreated, Data: data, Header: nats.Header{}}
	m.Header.Set(bus.HeaderReannounced, "true")
	if _, err := b.js.PublishMsg(b.ctx, m, jetstream.WithMsgID("created-"+rec.Id)); err != nil {
		t.Fatal(err)
	}
}

// A worker's report may reach the processor before the record that was
// published with the job's work item is stored: it waits for the record
// instead of being dropped. Its RUNNING is the job's first announcement:
// the SCHEDULED held back is dropped, not sent late.
func TestReportBeforeRecordWaits(t *testing.T) {
	b := setup(t, oneService(), time.Minute)
	b.exec(t, update("job-2", 1, running, 0))
	time.Sleep(200 * time.Millisecond) // the report is handled, and finds no record
	b.create(t, "job-2")
	b.waitStatuses(t, "job-2", "RUNNING-0")
	time.Sleep(processor.DefaultScheduledDelay + 200*time.Millisecond)
	b.waitStatuses(t, "job-2", "RUNNING-0")
	if rec := b.record(t, "job-2"); rec.Status != running {
		t.Errorf("record = %v, want RUNNING", rec)
	}
}
