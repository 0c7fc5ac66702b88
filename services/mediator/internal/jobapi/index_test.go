package jobapi

import (
	"context"
	"sync"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/services/mediator/internal/jobindex"
	clientv3 "go.etcd.io/etcd/client/v3"
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

// The index write runs alongside the record's: a job is listed as soon as
// CreateJob answers, and the records withdrawn for repeats of one request
// (calls retried while the first is under way) leave no entry behind, so
// the tenant's index holds the one job created.
func TestCreateJobIndexesTheJobCreatedOnly(t *testing.T) {
	f := setup(t)
	f.srv.SetIndex(jobindex.New(f.env.EtcdCli))
	ids := make([]string, 8)
	var wg sync.WaitGroup
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
	if t.Failed() {
		return
	}
	resp, err := f.srv.ListJobs(as("acme"), &jobsv1.ListJobsRequest{})
	if err != nil || len(resp.GetJobs()) != 1 || resp.Jobs[0].GetId() != ids[0] {
		t.Fatalf("listed %v, %v; want the one job %s", resp.GetJobs(), err, ids[0])
	}
	entries, err := f.env.EtcdCli.Get(context.Background(), jobindex.Prefix+"acme/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || entries.Count != 1 {
		t.Fatalf("index entries = %v, %v; want 1", entries, err)
	}
}
