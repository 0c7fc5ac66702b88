package jobapi

import (
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/services/mediator/internal/jobindex"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestRetention(t *testing.T) {
	f := setup(t)
	f.srv.SetIndex(jobindex.New(f.env.EtcdCli))
	ctx := as("acme")
	create := func(rid string, ttl time.Duration) string {
		j := ameJob()
		if ttl > 0 {
			j.Ttl = durationpb.New(ttl)
		}
		got, err := f.srv.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: j, RequestId: rid})
		if err != nil {
			t.Fatal(err)
		}
		return got.Id
	}
	end := func(id string, ago time.Duration) {
		job, rev, err := f.store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		job.Status, job.EndTime = jobsv1.JobStatus_JOB_STATUS_COMPLETED, timestamppb.New(time.Now().Add(-ago))
		if _, err := f.store.Update(ctx, job, rev); err != nil {
			t.Fatal(err)
		}
	}
	shortTTL := create("r1", time.Minute) // ended 2 min ago: gone
	end(shortTTL, 2*time.Minute)
	longTTL := create("", time.Hour) // ended 2 min ago, kept an hour
	end(longTTL, 2*time.Minute)
	old := create("", 0) // no ttl, ended beyond the retention period: gone
	end(old, 91*24*time.Hour)
	recent := create("", 0) // no ttl, ended yesterday: kept
	end(recent, 24*time.Hour)
	running := create("", time.Nanosecond) // never ended: never deleted
	_ = running

	n, err := f.srv.RetainOnce(ctx, DefaultRetention)
	if err != nil || n != 2 {
		t.Fatalf("RetainOnce = %d, %v; want 2", n, err)
	}
	for id, want := range map[string]bool{shortTTL: false, longTTL: true, old: false, recent: true, running: true} {
		_, err := f.srv.GetJob(ctx, &jobsv1.GetJobRequest{Id: id})
		if (err == nil) != want {
			t.Errorf("job %s kept=%v, want %v", id, err == nil, want)
		}
	}
	resp, err := f.srv.ListJobs(ctx, &jobsv1.ListJobsRequest{})
	if err != nil || len(resp.Jobs) != 3 {
		t.Fatalf("listing after retention: %d jobs, %v", len(resp.GetJobs()), err)
	}
	// The deleted job's request id is free again.
	if again := create("r1", 0); again == shortTTL {
		t.Fatal("request id of a deleted job still answered with it")
	}
}

func TestRequestIDWindow(t *testing.T) {
	f := setup(t)
	f.store.SetRequestWindow(300 * time.Millisecond)
	ctx := as("acme")
	first, err := f.srv.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: "daily-run"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := f.srv.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: "daily-run"})
	if err != nil || again.Id != first.Id {
		t.Fatalf("repeat within the window: %v %v", again.GetId(), err)
	}
	// Past the window the same request id makes a new job.
	testsupport.Eventually(t, 10*time.Second, "request id expires", func() bool {
		j, err := f.srv.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: ameJob(), RequestId: "daily-run"})
		return err == nil && j.Id != first.Id
	})
}
