package jobapi

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/jobindex"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/medius-platform/medius/services/mediator/internal/quota"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// A job without a request id is stored and announced (both sent before
// either answer is awaited): the record in the bucket and the JobCreated on
// the stream are the job the client was given, remembered for the status
// consumer's updates.
func TestCreateJobStoresAndAnnounces(t *testing.T) {
	f := setup(t)
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	in := ameJob()
	in.Tags = map[string]string{"a": "1", "b": "2"}
	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: in})
	if err != nil {
		t.Fatal(err)
	}
	ev := &eventsv1.JobCreated{}
	if id := created.Next(ev); id != "created-"+job.GetId() || !proto.Equal(ev.GetJob(), job) {
		t.Fatalf("JobCreated %q = %v, want the job returned %v", id, ev.GetJob(), job)
	}
	stored, _, cached, err := f.store.GetCached(context.Background(), job.GetId())
	if err != nil || !cached || !proto.Equal(stored, job) {
		t.Fatalf("record = %v (cached %v), %v; want the job returned %v", stored, cached, err, job)
	}
	if stored, _, err := jobstore.New(f.env.Jobs).Get(context.Background(), job.GetId()); err != nil || !proto.Equal(stored, job) {
		t.Fatalf("record in the bucket = %v, %v; want %v", stored, err, job)
	}
}

// With a request id, the job is stored, claimed and only then announced: a
// repeat answers with it and announces nothing.
func TestCreateJobWithRequestIDAnnouncesOnce(t *testing.T) {
	f := setup(t)
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: "r-1"})
	if err != nil {
		t.Fatal(err)
	}
	if owner, ok, err := f.store.RequestOwner(context.Background(), "acme", "r-1"); err != nil || !ok || owner != job.GetId() {
		t.Fatalf("request id owner = %q %v, %v; want %s", owner, ok, err, job.GetId())
	}
	ev := &eventsv1.JobCreated{}
	if id := created.Next(ev); id != "created-"+job.GetId() || !proto.Equal(ev.GetJob(), job) {
		t.Fatalf("JobCreated %q = %v, want %v", id, ev.GetJob(), job)
	}
	again, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: "r-1"})
	if err != nil || again.GetId() != job.GetId() {
		t.Fatalf("repeat = %v, %v; want job %s", again, err, job.GetId())
	}
	created.None(300 * time.Millisecond)
}

// onlyQuota admits against one quota for every tenant, with the real
// (etcd) admitter.
type onlyQuota struct {
	*quota.Admitter
	q tenants.Quota
}

func (o onlyQuota) Admit(ctx context.Context, tenant, job string) error {
	return o.Admitter.Admit(ctx, tenant, job, o.q)
}

func (o onlyQuota) Unadmit(ctx context.Context, tenant, job string) error {
	return o.Admitter.Unadmit(ctx, tenant, job, o.q.Period)
}

func (o onlyQuota) AdmitRestart(ctx context.Context, ended *jobsv1.Job, run int32) (bool, error) {
	return o.Admitter.AdmitRestart(ctx, ended, run, o.q)
}

// nextID makes the server name its next job id.
func nextID(f *fixture, id string) {
	f.srv.newID = func() (string, error) {
		f.srv.newID = jobstore.NewID
		return id, nil
	}
}

// A job announced whose record cannot be stored (here: its id holds another
// record) is withdrawn: a cancel request goes to the processor, the quota
// slot is given back and the client told to try again. Yet a record holding
// this very job, stored by an earlier try whose answer was lost, is success.
func TestCreateJobRecordFailsAfterAnnouncement(t *testing.T) {
	f := setup(t)
	f.srv.SetAdmission(onlyQuota{quota.New(f.env.EtcdCli), tenants.Quota{MaxConcurrentJobs: 1}})
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	cancels := f.env.WatchEvents(t, bus.SubjectJobCancel)
	ctx := context.Background()

	taken, err := jobstore.NewID()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Create(ctx, &jobsv1.Job{Id: taken, Tenant: "globex", Status: jobsv1.JobStatus_JOB_STATUS_NEW}); err != nil {
		t.Fatal(err)
	}
	nextID(f, taken)
	_, err = f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	wantProblem(t, err, codes.Unavailable, "")

	ev := &eventsv1.JobCreated{}
	if id := created.Next(ev); id != "created-"+taken || ev.GetJob().GetTenant() != "acme" {
		t.Fatalf("JobCreated %q = %v, want acme's job %s", id, ev.GetJob(), taken)
	}
	cancel := &eventsv1.JobCancelRequested{}
	if id := cancels.Next(cancel); id != "cancel-"+taken || cancel.GetJobId() != taken || cancel.GetTenant() != "acme" {
		t.Fatalf("cancel %q = %v, want acme's job %s", id, cancel, taken)
	}
	if held, _, err := f.store.Get(ctx, taken); err != nil || held.GetTenant() != "globex" {
		t.Fatalf("the other record = %v, %v", held, err)
	}
	// The slot came back: the tenant's one concurrent job can be created.
	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatalf("create after the failed one: %v", err)
	}
	created.Next(ev)

	// An earlier try stored this job: the create answers "exists", and
	// the record holding this job is taken for success.
	if err := f.srv.admit.ReleaseRun(ctx, "acme", job.GetId(), quota.FirstRun); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	f.srv.now = func() time.Time { return now }
	landed, err := jobstore.NewID()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Create(ctx, &jobsv1.Job{Id: landed, Tenant: "acme", Status: jobsv1.JobStatus_JOB_STATUS_NEW, CreateTime: timestamppb.New(now)}); err != nil {
		t.Fatal(err)
	}
	nextID(f, landed)
	if job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()}); err != nil || job.GetId() != landed {
		t.Fatalf("create over its own record = %v, %v", job, err)
	}
	if id := created.Next(ev); id != "created-"+landed {
		t.Fatalf("JobCreated %q, want %s", id, landed)
	}
	cancels.None(300 * time.Millisecond)
}

// When the announcement cannot be stored (no events stream) the job is
// accepted all the same: it is stored NEW, and the sweep announces it.
func TestCreateJobAnnouncementFails(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	if err := f.env.JS.DeleteStream(ctx, bus.StreamEvents); err != nil {
		t.Fatal(err)
	}
	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatalf("create with the announcement refused: %v", err)
	}
	if stored, _, err := f.store.Get(ctx, job.GetId()); err != nil || stored.GetStatus() != jobsv1.JobStatus_JOB_STATUS_NEW {
		t.Fatalf("record = %v, %v", stored, err)
	}
}

// BenchmarkCreateJob is CreateJob against in-process NATS: the time a client
// waits for its job to be accepted and announced, back to back and paced like
// a light load (10 jobs/s, so every call finds the connection idle).
func BenchmarkCreateJob(b *testing.B) {
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	f := setup(b)
	f.srv.SetIndex(jobindex.New(f.env.EtcdCli)) // as the mediator runs
	ctx := as("acme")
	create := func(b *testing.B, requestID string) {
		if _, err := f.srv.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: requestID}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("no request id", func(b *testing.B) {
		for b.Loop() {
			create(b, "")
		}
	})
	b.Run("request id", func(b *testing.B) {
		n := 0
		for b.Loop() {
			n++
			create(b, fmt.Sprintf("%s-%d", b.Name(), n))
		}
	})
	for _, requestID := range []bool{false, true} {
		b.Run(fmt.Sprintf("paced request id %v", requestID), func(b *testing.B) {
			took := make([]time.Duration, 0, b.N)
			for i := range b.N {
				b.StopTimer()
				time.Sleep(100 * time.Millisecond)
				b.StartTimer()
				id := ""
				if requestID {
					id = fmt.Sprintf("%s-%d", b.Name(), i)
				}
				start := time.Now()
				create(b, id)
				took = append(took, time.Since(start))
			}
			// The mean hides the typical call behind a few slow ones.
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(took[len(took)*9/10].Microseconds()), "p90-µs")
		})
	}
}

// Calls repeating a request id while the first is still under way (a
// client retrying on its own timeout) make one job, and count one job of
// the tenant's period: the admissions of the repeats are undone, not only
// their slots given back.
func TestRepeatedRequestCountsOneJobOfThePeriod(t *testing.T) {
	f := setup(t)
	adm := quota.New(f.env.EtcdCli)
	q := tenants.Quota{MaxConcurrentJobs: 100, MaxJobsPerPeriod: 100, Period: tenants.PeriodDay}
	f.srv.SetAdmission(onlyQuota{adm, q})
	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		wg.Go(func() {
			job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: "retried"})
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = job.GetId()
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("jobs answered %v, want one", ids)
		}
	}
	ctx := context.Background()
	if active, err := adm.Active(ctx, "acme"); err != nil || active != 1 {
		t.Fatalf("active = %d, %v; want 1", active, err)
	}
	g, err := f.env.EtcdCli.Get(ctx, quota.JobsKey("acme", quota.PeriodID(q.Period, time.Now())))
	if err != nil || len(g.Kvs) != 1 || string(g.Kvs[0].Value) != "1" {
		t.Fatalf("jobs counted of the period: %v, %v; want 1", g.Kvs, err)
	}
}

// A job whose record's create gets no answer may have been stored (the
// sweep then announces it): its admission is kept, not undone, so the job
// never runs outside the tenant's quota. (The stream takes the record but
// answers nothing; the announcement is refused.)
func TestCreateJobUnansweredKeepsItsAdmission(t *testing.T) {
	f := setup(t)
	adm := quota.New(f.env.EtcdCli)
	q := tenants.Quota{MaxConcurrentJobs: 1, MaxJobsPerPeriod: 1, Period: tenants.PeriodDay}
	f.srv.SetAdmission(onlyQuota{adm, q})
	ctx := context.Background()
	info, err := f.env.JS.Stream(ctx, "KV_"+bus.BucketJobs)
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.CachedInfo().Config
	cfg.NoAck = true
	if _, err := f.env.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := f.env.JS.DeleteStream(ctx, bus.StreamEvents); err != nil {
		t.Fatal(err)
	}
	if _, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()}); err == nil {
		t.Fatal("create with its record unanswered succeeded")
	}
	ids, err := f.store.IDs(ctx)
	if err != nil || len(ids) != 1 {
		t.Fatalf("records = %v, %v; want the one stored unanswered", ids, err)
	}
	if active, err := adm.Active(ctx, "acme"); err != nil || active != 1 {
		t.Fatalf("active = %d, %v; want the stored job's slot kept", active, err)
	}
}

// A job created while NATS is away is refused as unavailable, and does not
// appear once NATS is back: the client was told it does not exist.
func TestCreateJobDuringNATSOutageNeverAppears(t *testing.T) {
	f := setup(t)
	f.env.NATS.Shutdown()
	for f.env.NC.IsConnected() {
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(as("acme"), 5*time.Second)
	_, err := f.srv.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: ameJob()})
	cancel()
	if code := status.Code(problem.ToStatus(ctx, err)); code != codes.Unavailable {
		t.Fatalf("CreateJob during the outage: %v (%v), want Unavailable", err, code)
	}

	if err := f.env.NATS.Restart(); err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, 10*time.Second, "reconnect", f.env.NC.IsConnected)
	// Anything the client held back travels before a later job.
	var later *jobsv1.Job
	testsupport.Eventually(t, 10*time.Second, "a job after the outage", func() bool {
		later, err = f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
		return err == nil
	})
	created := f.env.WatchEvents(t, bus.SubjectJobCreated)
	ev := &eventsv1.JobCreated{}
	if id := created.Next(ev); id != "created-"+later.GetId() {
		t.Fatalf("first JobCreated %q, want the later job's: the failed create landed", id)
	}
	created.None(300 * time.Millisecond)
	keys, err := f.env.Jobs.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for k := range keys.Keys() {
		if !strings.HasPrefix(k, "req.") {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d job records, want 1 (the later job's)", n)
	}
}
