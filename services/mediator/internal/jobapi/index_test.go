package jobapi

import (
	"context"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/services/mediator/internal/jobindex"
)

// Jobs whose index write never happened (here: created while the server had
// no index, as after a crash between announcing a job and indexing it) are
// indexed by the JobCreated consumer.
func TestIndexConsumerCompletesTheIndex(t *testing.T) {
	f := setup(t)
	ctx := as("acme")
	var ids []string
	for range 3 {
		j, err := f.srv.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: ameJob()})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.Id)
	}
	f.srv.SetIndex(jobindex.New(f.env.EtcdCli))
	if resp, _ := f.srv.ListJobs(ctx, &jobsv1.ListJobsRequest{}); len(resp.GetJobs()) != 0 {
		t.Fatalf("listed %d jobs before the consumer ran", len(resp.GetJobs()))
	}
	cctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.srv.IndexCreated(cctx, f.env.JS) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := f.srv.ListJobs(ctx, &jobsv1.ListJobsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Jobs) == 3 {
			if resp.Jobs[0].Id != ids[2] || resp.Jobs[2].Id != ids[0] {
				t.Fatalf("listed %v, want newest first %v", resp.Jobs, ids)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the consumer indexed %d of 3 jobs in 15 s", len(resp.Jobs))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
