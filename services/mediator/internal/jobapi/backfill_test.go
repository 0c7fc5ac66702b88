package jobapi

import (
	"context"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/services/mediator/internal/jobindex"
	"github.com/medius-platform/medius/services/mediator/internal/quota"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestBackfill(t *testing.T) {
	f := setup(t)
	ctx := as("acme")
	var ids []string
	for range 3 { // stored before the index existed
		j, err := f.srv.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: ameJob()})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.Id)
	}
	f.srv.SetIndex(jobindex.New(f.env.EtcdCli))
	if resp, _ := f.srv.ListJobs(ctx, &jobsv1.ListJobsRequest{}); len(resp.GetJobs()) != 0 {
		t.Fatalf("index listed %d jobs before the backfill", len(resp.GetJobs()))
	}
	for range 2 { // the second run only reads the marker
		if err := f.srv.Backfill(context.Background(), f.env.EtcdCli); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := f.srv.ListJobs(ctx, &jobsv1.ListJobsRequest{})
	if err != nil || len(resp.Jobs) != 3 || resp.Jobs[0].Id != ids[2] {
		t.Fatalf("after backfill: %v %v", resp, err)
	}
}

func TestReconcileQuota(t *testing.T) {
	f := setup(t)
	ts := tenants.New(f.env.EtcdCli)
	q := tenants.Quota{MaxConcurrentJobs: 5, MaxJobsPerPeriod: 10, Period: tenants.PeriodDay}
	if _, err := ts.CreateTenant(context.Background(), tenants.Tenant{ID: "acme", Quota: q}); err != nil {
		t.Fatal(err)
	}
	adm := quota.New(f.env.EtcdCli)
	f.srv.SetAdmission(quota.TenantAdmitter{Admitter: adm, Tenants: ts})
	ctx := as("acme")
	running, err := f.srv.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	ended, err := f.srv.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	job, rev, _ := f.store.Get(ctx, ended.Id)
	job.Status = jobsv1.JobStatus_JOB_STATUS_FAILED
	if _, err := f.store.Update(ctx, job, rev); err != nil {
		t.Fatal(err)
	}
	// A slot taken by a mediator that died before storing its job (or
	// an admission that landed after its call gave up): it also counted
	// a job of the day, which is given back.
	if err := adm.Admit(context.Background(), "acme", "0190b6f1-0000-7000-8000-000000000000", q); err != nil {
		t.Fatal(err)
	}
	// Markers of an older mediator (one per job, naming no run), of a
	// job gone and of the running job; and the slot of a restart of the
	// running job that never moved its record (run 5, past any attempt
	// it knows).
	for _, key := range []string{
		quota.LegacyMarkerKey("acme", "0190b6f1-0000-7000-8000-000000000001"),
		quota.LegacyMarkerKey("acme", running.Id),
		quota.MarkerKey("acme", running.Id, 5),
	} {
		if _, err := f.env.EtcdCli.Put(context.Background(), key, time.Now().UTC().Format(time.RFC3339)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.env.EtcdCli.Put(context.Background(), quota.ActiveKey("acme"), "6"); err != nil {
		t.Fatal(err)
	}
	freed, err := f.srv.ReconcileQuota(context.Background(), adm, 0)
	if err != nil || freed != 4 {
		t.Fatalf("freed %d, %v; want 4", freed, err)
	}
	if n, _ := adm.Active(context.Background(), "acme"); n != 2 {
		t.Fatalf("active %d after reconciliation, want 2 (%s, its run and its older marker)", n, running.Id)
	}
	day, err := f.env.EtcdCli.Get(context.Background(), quota.JobsKey("acme", quota.PeriodID(q.Period, time.Now())))
	if err != nil || len(day.Kvs) != 1 || string(day.Kvs[0].Value) != "2" {
		t.Fatalf("jobs counted of the day after reconciliation: %v, %v; want 2 (the jobs created)", day.Kvs, err)
	}
	ms, err := adm.Markers(context.Background())
	if err != nil || len(ms) != 2 || ms[0].Job != running.Id || ms[0].Run != 1 || ms[1].Job != running.Id || ms[1].Run != 0 {
		t.Fatalf("markers after reconciliation = %+v, %v; want %s's first run and older marker", ms, err, running.Id)
	}
}

// A job deleted (by its client, or by retention) while its slot's release
// was lost gives the slot back as it goes, so the reconciliation never
// takes its marker for an admission whose job never came: the job it
// counted of the day stays counted.
func TestDeletedJobKeepsItsCountOfThePeriod(t *testing.T) {
	f := setup(t)
	q := tenants.Quota{MaxJobsPerPeriod: 10, Period: tenants.PeriodDay}
	adm := quota.New(f.env.EtcdCli)
	f.srv.SetAdmission(onlyQuota{adm, q})
	ctx := as("acme")
	end := func() string {
		created, err := f.srv.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: ameJob()})
		if err != nil {
			t.Fatal(err)
		}
		job, rev, _ := f.store.Get(ctx, created.Id)
		job.Status = jobsv1.JobStatus_JOB_STATUS_COMPLETED // its release lost
		job.EndTime = timestamppb.New(time.Now().Add(-2 * DefaultRetention))
		if _, err := f.store.Update(ctx, job, rev); err != nil {
			t.Fatal(err)
		}
		return created.Id
	}
	deleted := end()
	if _, err := f.srv.DeleteJob(ctx, &jobsv1.DeleteJobRequest{Id: deleted}); err != nil {
		t.Fatal(err)
	}
	end() // past retention
	if n, err := f.srv.RetainOnce(context.Background(), DefaultRetention); err != nil || n != 1 {
		t.Fatalf("retention deleted %d, %v; want 1", n, err)
	}
	if active, err := adm.Active(context.Background(), "acme"); err != nil || active != 0 {
		t.Fatalf("active = %d, %v; want 0", active, err)
	}
	if _, err := f.srv.ReconcileQuota(context.Background(), adm, 0); err != nil {
		t.Fatal(err)
	}
	day, err := f.env.EtcdCli.Get(context.Background(), quota.JobsKey("acme", quota.PeriodID(q.Period, time.Now())))
	if err != nil || len(day.Kvs) != 1 || string(day.Kvs[0].Value) != "2" {
		t.Fatalf("jobs counted of the day: %v, %v; want 2", day.Kvs, err)
	}
}
