package usage_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/quota"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"github.com/medius-platform/medius/services/mediator/internal/usage"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func completed(id, profile string, qty float64, end time.Time) *jobsv1.Job {
	return &jobsv1.Job{Id: id, Tenant: "acme", Profile: profile, Status: jobsv1.JobStatus_JOB_STATUS_COMPLETED,
		VerifiedQuantity: qty, CreateTime: timestamppb.New(end.Add(-time.Minute)), EndTime: timestamppb.New(end),
		Executions: []*jobsv1.Execution{{Attempt: 1, Service: "old"}, {Attempt: 2, Service: "medius-worker"}}}
}

func TestRecordOnceAndAggregate(t *testing.T) {
	env := testsupport.Start(t)
	s := usage.New(env.EtcdCli)
	ctx := context.Background()
	day1 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	day2 := day1.Add(24 * time.Hour)

	// The same completion delivered concurrently and again later is
	// recorded once.
	var wg sync.WaitGroup
	var mu sync.Mutex
	created := 0
	for range 5 {
		wg.Go(func() {
			ok, err := s.RecordJob(ctx, completed("j1", "ExtractTechnicalMetadata", 3.5, day1))
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if ok {
				created++
			}
		})
	}
	wg.Wait()
	if created != 1 {
		t.Fatalf("created %d records, want 1", created)
	}
	for _, j := range []*jobsv1.Job{
		completed("j1", "ExtractTechnicalMetadata", 3.5, day1),
		completed("j2", "Transcode", 10, day1),
		completed("j3", "Transcode", 2, day2),
		{Id: "j4", Tenant: "acme", Profile: "Transcode", Status: jobsv1.JobStatus_JOB_STATUS_FAILED, VerifiedQuantity: 99},
	} {
		if _, err := s.RecordJob(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := s.Records(ctx, "acme", time.Time{}, time.Time{})
	if err != nil || len(recs) != 3 || recs[0].Service != "medius-worker" {
		t.Fatalf("records = %+v, %v", recs, err)
	}
	byProfile, err := s.Aggregate(ctx, "acme", time.Time{}, time.Time{}, "profile")
	if err != nil {
		t.Fatal(err)
	}
	want := []usage.Group{{Key: "ExtractTechnicalMetadata", Jobs: 1, Quantity: 3.5}, {Key: "Transcode", Jobs: 2, Quantity: 12}}
	if len(byProfile) != 2 || byProfile[0] != want[0] || byProfile[1] != want[1] {
		t.Fatalf("by profile = %+v", byProfile)
	}
	byDay, err := s.Aggregate(ctx, "acme", day1.Add(-time.Hour), day2, "day")
	if err != nil || len(byDay) != 1 || byDay[0] != (usage.Group{Key: "2026-03-01", Jobs: 2, Quantity: 13.5}) {
		t.Fatalf("by day in range = %+v, %v", byDay, err)
	}
	if other, _ := s.Aggregate(ctx, "other", time.Time{}, time.Time{}, ""); len(other) != 0 {
		t.Fatalf("other tenant sees %+v", other)
	}

	// The recorded quantity counts against a quantity quota of its month.
	a := quota.New(env.EtcdCli)
	err = a.Admit(ctx, "acme", "next", tenants.Quota{MaxQuantityPerPeriod: 15.5})
	if err != nil {
		t.Fatalf("under the quantity quota: %v", err) // this month has no usage
	}
}

func TestQuantityQuota(t *testing.T) {
	env := testsupport.Start(t)
	s := usage.New(env.EtcdCli)
	ctx := context.Background()
	if _, err := s.RecordJob(ctx, completed("j1", "P", 20, time.Now())); err != nil {
		t.Fatal(err)
	}
	a := quota.New(env.EtcdCli)
	if err := a.Admit(ctx, "acme", "a", tenants.Quota{MaxQuantityPerPeriod: 30}); err != nil {
		t.Fatal(err)
	}
	err := a.Admit(ctx, "acme", "b", tenants.Quota{MaxQuantityPerPeriod: 20, Period: tenants.PeriodDay})
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Type != quota.TypeQuantity {
		t.Fatalf("admit past the quantity quota: %v", err)
	}
}

// Jobs of one tenant ending together are recorded in shared transactions:
// each exactly once, even when recorded twice at once or again later (a
// redelivered completion), with the counters of each day and of the month
// adding up to the quantities recorded.
func TestConcurrentRecordsOfOneTenant(t *testing.T) {
	env := testsupport.Start(t)
	s := usage.New(env.EtcdCli)
	ctx := context.Background()
	day1 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	day2 := day1.Add(24 * time.Hour)
	job := func(i int) *jobsv1.Job {
		end := day1
		if i%3 == 0 {
			end = day2
		}
		return completed(fmt.Sprint(i), "P", float64(i%7)+0.5, end)
	}
	// Recorded before: their completion comes again below.
	for i := range 10 {
		if ok, err := s.RecordJob(ctx, job(i)); err != nil || !ok {
			t.Fatalf("record %d: %v %v", i, ok, err)
		}
	}
	const jobs = 150
	var mu sync.Mutex
	created := map[string]int{}
	var wg sync.WaitGroup
	for i := range jobs + 50 {
		wg.Go(func() {
			j := job(i % jobs) // jobs 0-49 recorded twice at once
			ok, err := s.RecordJob(ctx, j)
			if err != nil {
				t.Errorf("record %s: %v", j.GetId(), err)
			}
			mu.Lock()
			defer mu.Unlock()
			if ok {
				created[j.GetId()]++
			}
		})
	}
	wg.Wait()
	var wantDay1, wantDay2 float64
	for i := range jobs {
		id := fmt.Sprint(i)
		if want := map[bool]int{true: 0, false: 1}[i < 10]; created[id] != want {
			t.Errorf("job %s created %d times here, want %d", id, created[id], want)
		}
		if q := job(i).GetVerifiedQuantity(); i%3 == 0 {
			wantDay2 += q
		} else {
			wantDay1 += q
		}
	}
	recs, err := s.Records(ctx, "acme", time.Time{}, time.Time{})
	if err != nil || len(recs) != jobs {
		t.Fatalf("%d records (%v), want %d", len(recs), err, jobs)
	}
	d1, d2 := quota.QuantityKeys("acme", day1), quota.QuantityKeys("acme", day2)
	for k, want := range map[string]float64{d1[0]: wantDay1, d2[0]: wantDay2, d1[1]: wantDay1 + wantDay2} {
		resp, err := env.EtcdCli.Get(ctx, k)
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != fmt.Sprint(want) {
			t.Errorf("counter %s = %v (%v), want %g", k, resp.Kvs, err, want)
		}
	}
}

// BenchmarkRecordJobConcurrent records completions of one tenant from 64
// goroutines, as the status consumer does under load: the cost of usage
// recording per job when jobs of one tenant end together.
func BenchmarkRecordJobConcurrent(b *testing.B) {
	env := testsupport.Start(b)
	s := usage.New(env.EtcdCli)
	ctx := context.Background()
	end := time.Now()
	var next atomic.Int64
	b.SetParallelism(max(64/runtime.GOMAXPROCS(0), 1))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("job-%d", next.Add(1))
			if ok, err := s.RecordJob(ctx, completed(id, "P", 1, end)); err != nil || !ok {
				b.Errorf("record %s: %v %v", id, ok, err)
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "jobs/s")
}
