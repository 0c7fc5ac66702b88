package jobapi

import (
	"context"
	"sync"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"google.golang.org/grpc/codes"
)

// A tenant's open watches are bounded on each mediator: one more is
// refused (429 / ResourceExhausted) while another tenant's is not, and
// ending one makes room.
func TestWatchesPerTenantBounded(t *testing.T) {
	f := setup(t)
	ctx, cancel := context.WithCancel(as("acme"))
	defer cancel()
	job, err := f.srv.CreateJob(ctx, &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	other, err := f.srv.CreateJob(as("other"), &jobsv1.CreateJobRequest{Job: ameJob()})
	if err != nil {
		t.Fatal(err)
	}
	// watch opens a watch on ctx and returns once its first state came.
	var wg sync.WaitGroup
	defer wg.Wait()
	watch := func(ctx context.Context, id string) {
		t.Helper()
		first := make(chan struct{})
		var once sync.Once
		wg.Go(func() {
			err := f.srv.Watch(ctx, id, func(*jobsv1.Job) error { once.Do(func() { close(first) }); return nil })
			if ctx.Err() == nil {
				t.Errorf("watch ended: %v", err)
			}
			once.Do(func() { close(first) })
		})
		<-first
	}
	var firstCancel context.CancelFunc
	for i := range MaxWatchesPerTenant {
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		if i == 0 {
			firstCancel = wcancel
		}
		watch(wctx, job.GetId())
	}
	// Bounded, so that a watch let through ends the call too.
	tctx, tcancel := context.WithTimeout(ctx, 5*time.Second)
	defer tcancel()
	over := f.srv.Watch(tctx, job.GetId(), func(*jobsv1.Job) error { return nil })
	wantProblem(t, over, codes.ResourceExhausted, "")

	octx, ocancel := context.WithCancel(as("other"))
	defer ocancel()
	watch(octx, other.GetId())

	firstCancel()
	testsupport.Eventually(t, 5*time.Second, "room for a watch once one ended", func() bool {
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		opened := false
		_ = f.srv.Watch(wctx, job.GetId(), func(*jobsv1.Job) error { opened = true; wcancel(); return nil })
		return opened
	})
}
