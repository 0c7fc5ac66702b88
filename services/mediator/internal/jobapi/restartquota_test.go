package jobapi

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/quota"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// wantQuotaRefusal checks err is CreateJob's over-quota answer: 429 /
// ResourceExhausted naming the quota.
func wantQuotaRefusal(t *testing.T, err error, quotaType string) {
	t.Helper()
	wantProblem(t, err, codes.ResourceExhausted, "")
	p := problem.FromStatus(status.Convert(problem.ToStatus(context.Background(), err)))
	if p.GetType() != problem.TypePrefix+quotaType || p.GetStatus() != 429 {
		t.Fatalf("problem = %v, want %s (429)", p, quotaType)
	}
}

// endJob ends job id as the status consumer does: the record terminal,
// then the quota slots of its runs over released (the terminal hook).
func endJob(t *testing.T, f *fixture, id string, st jobsv1.JobStatus) {
	t.Helper()
	moveOn(t, f, id, st)
	terminalHook(t, f, id)
}

// terminalHook runs the mediator's quota hook on job id's record as it is.
func terminalHook(t *testing.T, f *fixture, id string) {
	t.Helper()
	job, _, err := f.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	hook := f.srv.admit.(interface {
		ReleaseEnded(context.Context, *jobsv1.Job) error
	})
	if err := hook.ReleaseEnded(context.Background(), job); err != nil {
		t.Fatal(err)
	}
}

// A restart runs the job again, so it takes one of the tenant's concurrent
// slots: a tenant at its limit cannot run more jobs at once by restarting
// failed ones. It is refused as CreateJob refuses, and changes nothing; once
// a slot is free it is accepted and holds the slot. It is no job of the
// period: accepted at the period's job limit, and not counted.
func TestRestartTakesAConcurrentSlot(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	ts := tenants.New(f.env.EtcdCli)
	if _, err := ts.CreateTenant(ctx, tenants.Tenant{ID: "acme",
		Quota: tenants.Quota{MaxConcurrentJobs: 1, MaxJobsPerPeriod: 2, Period: tenants.PeriodDay}}); err != nil {
		t.Fatal(err)
	}
	adm := quota.New(f.env.EtcdCli)
	f.srv.SetAdmission(quota.TenantAdmitter{Admitter: adm, Tenants: ts})
	restarts := f.env.WatchEvents(t, bus.SubjectJobRestart)
	checks := f.env.WatchEvents(t, subjectRestartCheck)

	failed, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	processorRecord(t, f, failed.GetId(), 1)
	endJob(t, f, failed.GetId(), jobsv1.JobStatus_JOB_STATUS_FAILED)
	running, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}

	// At the limit: the restart is refused, and nothing moves.
	_, err = f.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: failed.GetId()})
	wantQuotaRefusal(t, err, quota.TypeConcurrent)
	if got, _, err := f.store.Get(ctx, failed.GetId()); err != nil || got.GetStatus() != jobsv1.JobStatus_JOB_STATUS_FAILED {
		t.Fatalf("job after the refused restart = %v, %v; want still FAILED", got, err)
	}
	checks.None(200 * time.Millisecond)
	restarts.None(0)
	if n, _ := adm.Active(ctx, "acme"); n != 1 {
		t.Fatalf("active = %d after the refused restart, want 1", n)
	}

	// The running job ends: the restart goes through, at the period's job
	// limit (2 created), and takes the slot.
	endJob(t, f, running.GetId(), jobsv1.JobStatus_JOB_STATUS_COMPLETED)
	if _, err := f.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: failed.GetId()}); err != nil {
		t.Fatalf("restart with a free slot: %v", err)
	}
	if n, _ := adm.Active(ctx, "acme"); n != 1 {
		t.Fatalf("active = %d after the restart, want 1", n)
	}
	_, err = f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	wantQuotaRefusal(t, err, quota.TypeConcurrent)
	// The restarted run ends: the slot is free again, and the period's
	// count is what the two jobs created made it.
	endJob(t, f, failed.GetId(), jobsv1.JobStatus_JOB_STATUS_FAILED)
	_, err = f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	wantQuotaRefusal(t, err, quota.TypeJobs)
}

// racedKV is a jobs bucket where another writer updates a record just
// before each update of this one's, which then fails its compare-and-set.
// The other writer leaves the job as it was (as a restart check's fence
// does), or, with status set, moves it there and adds the execution of
// attempt restart (as a restart of the same job asked at the same moment
// does).
type racedKV struct {
	jetstream.KeyValue
	status  jobsv1.JobStatus
	restart int32
}

func (kv racedKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	e, err := kv.KeyValue.Get(ctx, key)
	if err != nil {
		return 0, err
	}
	data := e.Value()
	if kv.status != jobsv1.JobStatus_JOB_STATUS_UNSPECIFIED {
		job := &jobsv1.Job{}
		if err := proto.Unmarshal(data, job); err != nil {
			return 0, err
		}
		job.Status = kv.status
		addRestartExecution(job, kv.restart)
		if data, err = proto.Marshal(job); err != nil {
			return 0, err
		}
	}
	if _, err := kv.KeyValue.Update(ctx, key, data, rev); err != nil {
		return 0, err
	}
	return kv.KeyValue.Update(ctx, key, value, rev)
}

// A restart that takes a slot and then fails gives the slot back: the job
// stays ended, and the tenant's slot is free for its next job. But a
// restart whose record write lost to a restart of the same job leaves the
// slot to the run that won (a job's slot is one, whoever took it).
func TestFailedRestartGivesItsSlotBack(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	q := tenants.Quota{MaxConcurrentJobs: 1}
	adm := quota.New(f.env.EtcdCli)
	f.srv.SetAdmission(onlyQuota{adm, q})
	id, _ := failedJob(t, f)
	if err := adm.Release(ctx, "acme", id); err != nil {
		t.Fatal(err)
	}
	active := func(want int64, when string) {
		t.Helper()
		if n, err := adm.Active(ctx, "acme"); err != nil || n != want {
			t.Fatalf("active = %d (%v) %s, want %d", n, err, when, want)
		}
	}
	mediator := func(wrap func(jetstream.JetStream, *nats.Conn) jetstream.JetStream, wrapKV func(jetstream.KeyValue, *nats.Conn) jetstream.KeyValue) *fixture {
		m := otherMediator(t, f, wrap, wrapKV)
		m.srv.SetAdmission(onlyQuota{adm, q})
		return m
	}

	// The record write loses to another writer: 409, the slot given back.
	fenced := mediator(nil, func(kv jetstream.KeyValue, _ *nats.Conn) jetstream.KeyValue { return racedKV{KeyValue: kv} })
	_, err := fenced.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id})
	wantProblem(t, err, codes.FailedPrecondition, "")
	if got, _, err := f.store.Get(ctx, id); err != nil || got.GetStatus() != jobsv1.JobStatus_JOB_STATUS_FAILED {
		t.Fatalf("job after the failed restart = %v, %v; want still FAILED", got, err)
	}
	active(0, "after a restart that lost its record write")

	// The restart check cannot be stored: 503, the slot given back.
	dead := mediator(func(js jetstream.JetStream, nc *nats.Conn) jetstream.JetStream {
		return &fatefulJS{JetStream: js, nc: nc, subject: subjectRestartCheck, fate: diesBefore}
	}, nil)
	_, err = dead.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id})
	wantProblem(t, err, codes.Unavailable, "")
	active(0, "after a restart whose check was not stored")

	// A restart of the same job wins the record: this one gets 409, and
	// the slot stays with the run that won.
	lost := mediator(nil, func(kv jetstream.KeyValue, _ *nats.Conn) jetstream.KeyValue {
		return racedKV{KeyValue: kv, status: jobsv1.JobStatus_JOB_STATUS_QUEUED, restart: 2}
	})
	_, err = lost.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id})
	wantProblem(t, err, codes.FailedPrecondition, "")
	active(1, "after a restart that lost to a restart of the same job")
}

// lateReleaseAfterRestart runs a job of a tenant allowed one job at a time
// to the end of a first run that made attempts attempts (the status
// consumer wrote the end; its terminal hook is delayed), restarts it, then
// gives that run's release, late, with the record it was given: the
// restarted run keeps the slot, and a new job is refused. It returns the
// fixture, the admitter and the restarted job.
func lateReleaseAfterRestart(t *testing.T, attempts int32) (*fixture, *quota.Admitter, *jobsv1.Job) {
	t.Helper()
	f := setup(t)
	ctx := context.Background()
	q := tenants.Quota{MaxConcurrentJobs: 1}
	adm := quota.New(f.env.EtcdCli)
	f.srv.SetAdmission(onlyQuota{adm, q})
	job, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	id := job.GetId()
	processorRecord(t, f, id, attempts)
	rec, rev, err := f.store.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	rec.Status = jobsv1.JobStatus_JOB_STATUS_FAILED
	rec.Executions = nil
	for a := range attempts {
		rec.Executions = append(rec.Executions, &jobsv1.Execution{Attempt: a + 1, Service: "svc", Status: jobsv1.JobStatus_JOB_STATUS_FAILED})
	}
	if _, err := f.store.Update(ctx, rec, rev); err != nil {
		t.Fatal(err)
	}
	restarted, err := f.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if err := adm.ReleaseEnded(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if n, _ := adm.Active(ctx, "acme"); n != 1 {
		t.Fatalf("active = %d after the first run's late release, want 1 (the restarted run)", n)
	}
	_, err = f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
	wantQuotaRefusal(t, err, quota.TypeConcurrent)
	return f, adm, restarted
}

// The release of a job's run that ended, done late, after the job was
// restarted, leaves the restarted run's slot held: the tenant cannot run
// more jobs at once than its limit. The restarted run frees it at its end.
func TestLateReleaseOfTheRunBeforeARestart(t *testing.T) {
	f, adm, restarted := lateReleaseAfterRestart(t, 1)
	endJob(t, f, restarted.GetId(), jobsv1.JobStatus_JOB_STATUS_FAILED)
	if n, _ := adm.Active(context.Background(), "acme"); n != 0 {
		t.Fatalf("active = %d after the restarted run ended, want 0", n)
	}
	if _, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()}); err != nil {
		t.Fatalf("create once the restarted run ended: %v", err)
	}
}

// A job whose first run ended with no attempt (no service for it) is
// restarted as attempt 1: the first run's release, late, still leaves the
// restarted run's slot held.
func TestLateReleaseOfARunWithNoAttempt(t *testing.T) {
	f, adm, restarted := lateReleaseAfterRestart(t, 0)
	if got := jobstate.LatestAttempt(restarted); got != 1 {
		t.Fatalf("restart adds attempt %d, want 1", got)
	}
	endJob(t, f, restarted.GetId(), jobsv1.JobStatus_JOB_STATUS_FAILED)
	if n, _ := adm.Active(context.Background(), "acme"); n != 0 {
		t.Fatalf("active = %d after the restarted run ended, want 0", n)
	}
}

// Restarts of one job asked at once through two mediators: one goes ahead,
// the others are refused, and the job's run holds one slot, which its end
// frees.
func TestConcurrentRestartsHoldOneSlot(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	q := tenants.Quota{MaxConcurrentJobs: 10}
	adm := quota.New(f.env.EtcdCli)
	f.srv.SetAdmission(onlyQuota{adm, q})
	other := otherMediator(t, f, nil, nil)
	other.srv.SetAdmission(onlyQuota{adm, q})
	for range 5 {
		// The first run's hook has not run: the restarts free its slot.
		id, _ := failedJob(t, f)
		var accepted atomic.Int32
		var wg sync.WaitGroup
		for _, m := range []*fixture{f, other, f, other} {
			wg.Go(func() {
				_, err := m.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id})
				if err == nil {
					accepted.Add(1)
				} else if status.Code(err) != codes.FailedPrecondition {
					t.Errorf("restart: %v, want accepted or FailedPrecondition", err)
				}
			})
		}
		wg.Wait()
		if n, _ := adm.Active(ctx, "acme"); n != 1 || accepted.Load() != 1 {
			t.Fatalf("%d restarts accepted, active = %d; want 1 and 1", accepted.Load(), n)
		}
		endJob(t, f, id, jobsv1.JobStatus_JOB_STATUS_FAILED)
		if n, _ := adm.Active(ctx, "acme"); n != 0 {
			t.Fatalf("active = %d after the restarted run ended, want 0", n)
		}
	}
}

// The jobs admitted metric counts every run taken on: new jobs and
// restarts, told apart by the restarted attribute.
func TestAdmittedMetricCountsRestarts(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	prev := otel.GetMeterProvider()
	otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))
	t.Cleanup(func() { otel.SetMeterProvider(prev) })
	f := setup(t) // its counter comes from the provider above
	id, _ := failedJob(t, f)
	if _, err := f.srv.RestartJob(as("acme"), &jobsv1.RestartJobRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[bool]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "medius.mediator.jobs.admitted" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				restarted, _ := dp.Attributes.Value("restarted")
				got[restarted.AsBool()] += dp.Value
			}
		}
	}
	if got[false] != 1 || got[true] != 1 {
		t.Fatalf("admitted by restarted = %v, want one new job and one restart", got)
	}
}
