package jobapi

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/services/mediator/internal/jobindex"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestListIndexedPagination(t *testing.T) {
	f := setup(t)
	f.srv.SetIndex(jobindex.New(f.env.EtcdCli))
	const n = 1050
	ids := make(chan string, n)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				j := ameJob()
				j.Tags = map[string]string{"batch": fmt.Sprint(i % 3)}
				got, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: j})
				if err != nil {
					t.Error(err)
					return
				}
				ids <- got.GetId()
			}
		})
	}
	// Another tenant's jobs never show.
	for range 5 {
		if _, err := f.srv.CreateJob(as("other"), &jobsv1.CreateJobRequest{Job: ameJob()}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(ids)
	created := map[string]bool{}
	for id := range ids {
		created[id] = true
	}

	seen := map[string]bool{}
	last, token, pages := "", "", 0
	for {
		resp, err := f.srv.ListJobs(as("acme"), &jobsv1.ListJobsRequest{PageSize: 100, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, j := range resp.Jobs {
			if seen[j.Id] || !created[j.Id] {
				t.Fatalf("job %s repeated or foreign", j.Id)
			}
			if last != "" && j.Id >= last {
				t.Fatalf("not newest first: %s after %s", j.Id, last)
			}
			seen[j.Id], last = true, j.Id
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	if len(seen) != n || pages != 11 {
		t.Fatalf("listed %d jobs in %d pages, want %d in 11", len(seen), pages, n)
	}

	// Filters: tag, created range.
	count := func(req *jobsv1.ListJobsRequest) int {
		req.PageSize = 1000
		total := 0
		for {
			resp, err := f.srv.ListJobs(as("acme"), req)
			if err != nil {
				t.Fatal(err)
			}
			total += len(resp.Jobs)
			if req.PageToken = resp.NextPageToken; req.PageToken == "" {
				return total
			}
		}
	}
	if got := count(&jobsv1.ListJobsRequest{Tag: "batch=1"}); got != n/3 {
		t.Fatalf("tag batch=1: %d, want %d", got, n/3)
	}
	if got := count(&jobsv1.ListJobsRequest{Tag: "batch"}); got != n {
		t.Fatalf("tag batch: %d, want %d", got, n)
	}
	future := timestamppb.New(time.Now().Add(time.Hour))
	past := timestamppb.New(time.Now().Add(-time.Hour))
	if got := count(&jobsv1.ListJobsRequest{CreateTimeAfter: future}); got != 0 {
		t.Fatalf("created after the future: %d", got)
	}
	if got := count(&jobsv1.ListJobsRequest{CreateTimeAfter: past, CreateTimeBefore: future, Tag: "batch=2"}); got != n/3 {
		t.Fatalf("created in range with tag: %d, want %d", got, n/3)
	}
	if got := count(&jobsv1.ListJobsRequest{CreateTimeBefore: past}); got != 0 {
		t.Fatalf("created before the past: %d", got)
	}

	// Deleting: terminal jobs only, and they leave the listing.
	victim := last
	_, err := f.srv.DeleteJob(as("acme"), &jobsv1.DeleteJobRequest{Id: victim})
	wantProblem(t, err, codes.FailedPrecondition, "")
	job, rev, err := f.store.Get(as("acme"), victim)
	if err != nil {
		t.Fatal(err)
	}
	job.Status = jobsv1.JobStatus_JOB_STATUS_COMPLETED
	if _, err := f.store.Update(as("acme"), job, rev); err != nil {
		t.Fatal(err)
	}
	if _, err := f.srv.DeleteJob(as("other"), &jobsv1.DeleteJobRequest{Id: victim}); err == nil {
		t.Fatal("another tenant deleted the job")
	}
	if _, err := f.srv.DeleteJob(as("acme"), &jobsv1.DeleteJobRequest{Id: victim}); err != nil {
		t.Fatal(err)
	}
	if got := count(&jobsv1.ListJobsRequest{}); got != n-1 {
		t.Fatalf("after delete: %d", got)
	}
}

// A filter matching few of a tenant's many jobs costs a bounded amount
// per call: past maxListExamined entries the page ends short (here empty)
// with a token, and following the tokens finds every match once.
func TestListJobsExaminesABoundedNumberPerCall(t *testing.T) {
	f := setup(t)
	idx := jobindex.New(f.env.EtcdCli)
	f.srv.SetIndex(idx)
	var want []string
	for range 3 {
		j, err := f.srv.CreateJob(as("acme"), &jobsv1.CreateJobRequest{Job: ameJob()})
		if err != nil {
			t.Fatal(err)
		}
		want = append([]string{j.GetId()}, want...) // newest first
	}
	// Newer entries whose jobs are gone (deleted, their entries kept):
	// examined, never listed.
	ctx := context.Background()
	var ops []clientv3.Op
	for range maxListExamined + 100 {
		id, err := jobstore.NewID()
		if err != nil {
			t.Fatal(err)
		}
		if ops = append(ops, jobindex.PutOp("acme", jobindex.Entry{ID: id, Profile: "ExtractTechnicalMetadata"})); len(ops) == 100 {
			if _, err := f.env.EtcdCli.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	var got []string
	token, calls := "", 0
	for {
		resp, err := f.srv.ListJobs(as("acme"), &jobsv1.ListJobsRequest{PageSize: 10, PageToken: token, Status: jobsv1.JobStatus_JOB_STATUS_NEW})
		if err != nil {
			t.Fatal(err)
		}
		calls++
		if calls == 1 && (len(resp.GetJobs()) != 0 || resp.GetNextPageToken() == "") {
			t.Fatalf("first call listed %d jobs, token %q; want none and a token (the bound reached)", len(resp.GetJobs()), resp.GetNextPageToken())
		}
		for _, j := range resp.GetJobs() {
			got = append(got, j.GetId())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
		if calls > 5 {
			t.Fatalf("still going after %d calls", calls)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
}
