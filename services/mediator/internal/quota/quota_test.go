package quota_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/quota"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
)

func TestAdmitIsAtomic(t *testing.T) {
	env := testsupport.Start(t)
	a := quota.New(env.EtcdCli)
	ctx := context.Background()
	q := tenants.Quota{MaxConcurrentJobs: 10}

	var admitted, refused atomic.Int32
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			err := a.Admit(ctx, "acme", fmt.Sprintf("job-%d", i), q)
			var pe *problem.Error
			switch {
			case err == nil:
				admitted.Add(1)
			case errors.As(err, &pe) && pe.Code == codes.ResourceExhausted && pe.Type == quota.TypeConcurrent:
				refused.Add(1)
			default:
				t.Errorf("admit: %v", err)
			}
		})
	}
	wg.Wait()
	if admitted.Load() != 10 || refused.Load() != 40 {
		t.Fatalf("admitted %d refused %d, want 10 and 40", admitted.Load(), refused.Load())
	}
	// Another tenant has its own slots.
	if err := a.Admit(ctx, "other", "job-x", q); err != nil {
		t.Fatal(err)
	}

	// Releasing an admitted job twice frees one slot; releasing a job
	// never admitted frees none.
	var holder string
	for i := range 50 {
		id := fmt.Sprintf("job-%d", i)
		if err := a.Admit(ctx, "acme", id, q); err == nil {
			holder = id // already admitted: Admit is idempotent
			break
		}
	}
	if holder == "" {
		t.Fatal("re-admitting an admitted job was refused")
	}
	for range 2 {
		if err := a.Release(ctx, "acme", holder); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Release(ctx, "acme", "never-admitted"); err != nil {
		t.Fatal(err)
	}
	if n, _ := a.Active(ctx, "acme"); n != 9 {
		t.Fatalf("active = %d, want 9", n)
	}
	if err := a.Admit(ctx, "acme", "new-1", q); err != nil {
		t.Fatalf("freed slot not reusable: %v", err)
	}
	if err := a.Admit(ctx, "acme", "new-2", q); err == nil {
		t.Fatal("admitted beyond the quota")
	}
}

func TestJobsPerPeriod(t *testing.T) {
	env := testsupport.Start(t)
	a := quota.New(env.EtcdCli)
	ctx := context.Background()
	q := tenants.Quota{MaxJobsPerPeriod: 2, Period: tenants.PeriodDay}
	for i := range 2 {
		if err := a.Admit(ctx, "acme", fmt.Sprint(i), q); err != nil {
			t.Fatal(err)
		}
		if err := a.Release(ctx, "acme", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Ended jobs still count in the period.
	err := a.Admit(ctx, "acme", "3", q)
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Type != quota.TypeJobs {
		t.Fatalf("third job of the day: %v, want %s", err, quota.TypeJobs)
	}
}

// A restarted job takes a concurrent slot, refused at the limit as a new
// job is, but is no job of the period: neither counted nor refused for
// the period's count. A job still holding its slot (release not done yet)
// keeps it for the new run, and the call says it took none.
func TestAdmitRestart(t *testing.T) {
	env := testsupport.Start(t)
	a := quota.New(env.EtcdCli)
	ctx := context.Background()
	q := tenants.Quota{MaxConcurrentJobs: 2, MaxJobsPerPeriod: 2, Period: tenants.PeriodDay}
	for _, job := range []string{"a", "b"} {
		if err := a.Admit(ctx, "acme", job, q); err != nil {
			t.Fatal(err)
		}
	}
	jobsKey := quota.JobsKey("acme", quota.PeriodID(tenants.PeriodDay, time.Now()))
	periodJobs := func() string {
		t.Helper()
		resp, err := env.EtcdCli.Get(ctx, jobsKey)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("jobs of the period: %v, %v", resp, err)
		}
		return string(resp.Kvs[0].Value)
	}

	// Both slots held: "a" ran and failed, its release not done yet.
	took, err := a.AdmitRestart(ctx, "acme", "a", q)
	if err != nil || took {
		t.Fatalf("restart of a job holding its slot: took %v, %v; want false, nil", took, err)
	}
	if err := a.Release(ctx, "acme", "a"); err != nil {
		t.Fatal(err)
	}
	// "b" runs, "c" is restarted: at the period's job limit, but it is no
	// new job.
	took, err = a.AdmitRestart(ctx, "acme", "c", q)
	if err != nil || !took {
		t.Fatalf("restart with a slot free: took %v, %v; want true, nil", took, err)
	}
	if got := periodJobs(); got != "2" {
		t.Fatalf("jobs of the period after a restart = %s, want 2", got)
	}
	// Now at the concurrent limit: refused as CreateJob is.
	took, err = a.AdmitRestart(ctx, "acme", "a", q)
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Code != codes.ResourceExhausted || pe.Type != quota.TypeConcurrent || took {
		t.Fatalf("restart at the concurrent limit: took %v, %v; want %s", took, err, quota.TypeConcurrent)
	}
	if n, _ := a.Active(ctx, "acme"); n != 2 {
		t.Fatalf("active = %d, want 2", n)
	}
	if err := a.Release(ctx, "acme", "c"); err != nil {
		t.Fatal(err)
	}
	if n, _ := a.Active(ctx, "acme"); n != 1 {
		t.Fatalf("active after the restarted job ended = %d, want 1", n)
	}

	// The period's quantity used up: no more runs, new or again.
	qq := tenants.Quota{MaxQuantityPerPeriod: 10}
	if _, err := env.EtcdCli.Put(ctx, quota.QuantityKey("acme", quota.PeriodID(tenants.PeriodMonth, time.Now())), "10"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AdmitRestart(ctx, "acme", "d", qq); !errors.As(err, &pe) || pe.Type != quota.TypeQuantity {
		t.Fatalf("restart with the quantity used up: %v, want %s", err, quota.TypeQuantity)
	}
	// Without limits nothing is counted.
	if took, err := a.AdmitRestart(ctx, "free", "e", tenants.Quota{}); err != nil || took {
		t.Fatalf("restart without limits: took %v, %v", took, err)
	}
}

// A tenant without limits is admitted without counting, so its submits
// cost no etcd write; its releases are no-ops.
func TestUnlimitedIsNotCounted(t *testing.T) {
	env := testsupport.Start(t)
	a := quota.New(env.EtcdCli)
	ctx := context.Background()
	for i := range 5 {
		if err := a.Admit(ctx, "free", fmt.Sprint(i), tenants.Quota{}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := env.EtcdCli.Get(ctx, "/medius/quota/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 0 {
		t.Fatalf("%d quota keys written for a tenant without limits", resp.Count)
	}
	if err := a.Release(ctx, "free", "0"); err != nil {
		t.Fatal(err)
	}
}

// Submits of one tenant queued together are admitted in batches exactly up
// to the quota, and a job asked twice at once holds one slot: both calls get
// the same answer.
func TestBatchAdmitsUpToTheLimit(t *testing.T) {
	env := testsupport.Start(t)
	a := quota.New(env.EtcdCli)
	ctx := context.Background()
	q := tenants.Quota{MaxConcurrentJobs: 150, MaxJobsPerPeriod: 1000}
	var mu sync.Mutex
	answers := map[string][]bool{}
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Go(func() {
			job := fmt.Sprint(i % 200) // jobs 0-99 asked twice
			err := a.Admit(ctx, "acme", job, q)
			var pe *problem.Error
			if err != nil && (!errors.As(err, &pe) || pe.Type != quota.TypeConcurrent) {
				t.Errorf("admit %s: %v", job, err)
			}
			mu.Lock()
			answers[job] = append(answers[job], err == nil)
			mu.Unlock()
		})
	}
	wg.Wait()
	holders := 0
	for job, got := range answers {
		if len(got) == 2 && got[0] != got[1] {
			t.Errorf("job %s asked twice got %v", job, got)
		}
		if got[0] {
			holders++
		}
	}
	if n, err := a.Active(ctx, "acme"); err != nil || n != 150 || holders != 150 {
		t.Fatalf("active = %d (%v), %d jobs admitted; want exactly the limit 150", n, err, holders)
	}
}

// Jobs of one tenant ending together free exactly the slots they held, in
// shared transactions: a job released twice at once frees one, a job never
// admitted frees none.
func TestConcurrentReleases(t *testing.T) {
	env := testsupport.Start(t)
	a := quota.New(env.EtcdCli)
	ctx := context.Background()
	q := tenants.Quota{MaxConcurrentJobs: 1000}
	for i := range 100 {
		if err := a.Admit(ctx, "acme", fmt.Sprint(i), q); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i := range 160 {
		wg.Go(func() {
			// 0-59 held, each released twice; 100-139 never admitted.
			job := fmt.Sprint(i % 60)
			if i >= 120 {
				job = fmt.Sprint(100 + i - 120)
			}
			if err := a.Release(ctx, "acme", job); err != nil {
				t.Errorf("release %s: %v", job, err)
			}
		})
	}
	wg.Wait()
	if n, err := a.Active(ctx, "acme"); err != nil || n != 40 {
		t.Fatalf("active = %d (%v), want the 40 slots not released", n, err)
	}
	markers, err := a.Markers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if _, held := markers[[2]string{"acme", fmt.Sprint(i)}]; held != (i >= 60) {
			t.Errorf("job %d holds a slot: %v", i, held)
		}
	}
	if len(markers) != 40 {
		t.Errorf("%d markers, want 40", len(markers))
	}
}

// BenchmarkReleaseConcurrent releases admitted jobs of one tenant from 64
// goroutines, as the status consumer does when jobs of one tenant end
// together.
func BenchmarkReleaseConcurrent(b *testing.B) {
	env := testsupport.Start(b)
	a := quota.New(env.EtcdCli)
	ctx := context.Background()
	q := tenants.Quota{MaxConcurrentJobs: 1 << 40}
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Go(func() {
			for i := w; i < b.N; i += 64 {
				if err := a.Admit(ctx, "acme", fmt.Sprint(i), q); err != nil {
					b.Error(err)
				}
			}
		})
	}
	wg.Wait()
	var next atomic.Int64
	b.SetParallelism(max(64/runtime.GOMAXPROCS(0), 1))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := a.Release(ctx, "acme", fmt.Sprint(next.Add(1)-1)); err != nil {
				b.Error(err)
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "jobs/s")
	if n, err := a.Active(ctx, "acme"); err != nil || n != 0 {
		b.Fatalf("active after releasing all = %d, %v", n, err)
	}
}
