package quota_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/quota"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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

// A job admitted but not created gives back its slot and its count of
// the period, once however often it is undone; a restart's slot is not
// undone that way.
func TestUnadmit(t *testing.T) {
	env := testsupport.Start(t)
	a := quota.New(env.EtcdCli)
	ctx := context.Background()
	q := tenants.Quota{MaxConcurrentJobs: 5, MaxJobsPerPeriod: 2, Period: tenants.PeriodDay}
	for _, job := range []string{"kept", "undone"} {
		if err := a.Admit(ctx, "acme", job, q); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := a.Unadmit(ctx, "acme", "undone", q.Period); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Unadmit(ctx, "acme", "never-admitted", q.Period); err != nil {
		t.Fatal(err)
	}
	if active, err := a.Active(ctx, "acme"); err != nil || active != 1 {
		t.Fatalf("active = %d, %v; want 1 (the job kept)", active, err)
	}
	// The period counts one job: a second is admitted, a third refused.
	if err := a.Admit(ctx, "acme", "second", q); err != nil {
		t.Fatalf("second job of the day after one undone: %v", err)
	}
	var pe *problem.Error
	if err := a.Admit(ctx, "acme", "third", q); !errors.As(err, &pe) || pe.Type != quota.TypeJobs {
		t.Fatalf("third job of the day: %v, want %s", err, quota.TypeJobs)
	}

	// A restart's slot is a release's to free, not Unadmit's.
	if err := a.Release(ctx, "acme", "kept"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AdmitRestart(ctx, ended("kept", 1, 1), 2, q); err != nil {
		t.Fatal(err)
	}
	if err := a.Unadmit(ctx, "acme", "kept", q.Period); err != nil {
		t.Fatal(err)
	}
	if active, err := a.Active(ctx, "acme"); err != nil || active != 2 {
		t.Fatalf("active = %d, %v; want 2 (second, and kept's restart)", active, err)
	}
}

// A tenant whose period changes from day to month between a job's
// admission and its undo has the day counted back, where the job was
// counted, not the month.
func TestUnadmitCountsBackThePeriodAdmitted(t *testing.T) {
	env := testsupport.Start(t)
	a := quota.New(env.EtcdCli)
	ctx := context.Background()
	day := tenants.Quota{MaxJobsPerPeriod: 5, Period: tenants.PeriodDay}
	for _, job := range []string{"kept", "undone"} {
		if err := a.Admit(ctx, "acme", job, day); err != nil {
			t.Fatal(err)
		}
	}
	month := tenants.Quota{MaxJobsPerPeriod: 5, Period: tenants.PeriodMonth}
	if err := a.Admit(ctx, "acme", "monthly", month); err != nil {
		t.Fatal(err)
	}
	if err := a.Unadmit(ctx, "acme", "undone", month.Period); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for period, want := range map[string]string{tenants.PeriodDay: "1", tenants.PeriodMonth: "1"} {
		got, err := env.EtcdCli.Get(ctx, quota.JobsKey("acme", quota.PeriodID(period, now)))
		if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != want {
			t.Fatalf("jobs counted this %s: %v, %v; want %s", period, got.Kvs, err, want)
		}
	}
}

// An admission whose answer was lost (here dropped by the client's
// transport, as a reset connection would, the next reads failing too
// while it comes back) is read back: applied by etcd, it is an admission
// and the job goes ahead, holding the one slot and the one count of the
// period it took, rather than failing with them kept; never sent, it is
// tried again.
func TestAdmitWhoseAnswerIsLost(t *testing.T) {
	env := testsupport.Start(t)
	for _, sent := range []bool{true, false} {
		t.Run(fmt.Sprintf("applied %v", sent), func(t *testing.T) {
			var dropped, failReads atomic.Int32
			dropAnswer := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				txn, ok := req.(*etcdserverpb.TxnRequest)
				switch {
				case ok && writesMarker(txn) && dropped.Add(1) == 1:
					if sent {
						if err := invoker(ctx, method, req, reply, cc, opts...); err != nil {
							return err
						}
					}
					failReads.Store(2)
					return status.Error(codes.Unavailable, "connection reset by peer (answer dropped by the test)")
				case ok && failReads.Add(-1) >= 0:
					return status.Error(codes.Unavailable, "connection reset by peer (read failed by the test)")
				}
				return invoker(ctx, method, req, reply, cc, opts...)
			}
			cli, err := clientv3.New(clientv3.Config{Endpoints: env.Etcd.Endpoints, DialTimeout: 5 * time.Second,
				DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(dropAnswer)}})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			a := quota.New(cli)
			ctx := context.Background()
			tenant := fmt.Sprintf("tenant-%v", sent)
			q := tenants.Quota{MaxConcurrentJobs: 1, MaxJobsPerPeriod: 1, Period: tenants.PeriodDay}
			if err := a.Admit(ctx, tenant, "job-1", q); err != nil {
				t.Fatalf("admission with its answer lost: %v", err)
			}
			if dropped.Load() == 0 {
				t.Fatal("no admission answer was dropped")
			}
			if active, err := a.Active(ctx, tenant); err != nil || active != 1 {
				t.Fatalf("active = %d, %v; want 1", active, err)
			}
			got, err := cli.Get(ctx, quota.JobsKey(tenant, quota.PeriodID(q.Period, time.Now())))
			if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "1" {
				t.Fatalf("jobs counted of the day: %v, %v; want 1", got.Kvs, err)
			}
			// Admitted once: the same job again takes nothing more.
			if err := a.Admit(ctx, tenant, "job-1", q); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// writesMarker tells an admission's transaction: it puts a run marker.
func writesMarker(txn *etcdserverpb.TxnRequest) bool {
	for _, op := range txn.GetSuccess() {
		if put := op.GetRequestPut(); put != nil && strings.HasPrefix(string(put.GetKey()), "/medius/quota/active-runs/") {
			return true
		}
	}
	return false
}

// ended is job's record, FAILED after attempts 1..last; attempt from is
// the first of the run it is in (a restart's, marked).
func ended(job string, from, last int32) *jobsv1.Job {
	rec := &jobsv1.Job{Id: job, Tenant: "acme", Status: jobsv1.JobStatus_JOB_STATUS_FAILED}
	for a := int32(1); a <= last; a++ {
		rec.Executions = append(rec.Executions, &jobsv1.Execution{Attempt: a, Status: jobsv1.JobStatus_JOB_STATUS_FAILED, Restarted: a == from && a > 1})
	}
	return rec
}

// A restarted job takes a concurrent slot, refused at the limit as a new
// job is, but is no job of the period: neither counted nor refused for
// the period's count. The run before gives its slot back first (its
// release may not be done yet), so a restart is not refused for it.
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

	// Both slots held: "a" ran and failed, its release not done yet. Its
	// restart takes the slot its first run gives back.
	took, err := a.AdmitRestart(ctx, ended("a", 1, 1), 2, q)
	if err != nil || !took {
		t.Fatalf("restart of a job holding its slot: took %v, %v; want true, nil", took, err)
	}
	if n, _ := a.Active(ctx, "acme"); n != 2 {
		t.Fatalf("active = %d, want 2", n)
	}
	// "c" ended and released is restarted: at the period's job limit, but
	// it is no new job. Now at the concurrent limit: refused as CreateJob
	// is.
	took, err = a.AdmitRestart(ctx, ended("c", 1, 1), 2, q)
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Code != codes.ResourceExhausted || pe.Type != quota.TypeConcurrent || took {
		t.Fatalf("restart at the concurrent limit: took %v, %v; want %s", took, err, quota.TypeConcurrent)
	}
	if err := a.ReleaseEnded(ctx, ended("b", 1, 1)); err != nil {
		t.Fatal(err)
	}
	took, err = a.AdmitRestart(ctx, ended("c", 1, 1), 2, q)
	if err != nil || !took {
		t.Fatalf("restart with a slot free: took %v, %v; want true, nil", took, err)
	}
	if got := periodJobs(); got != "2" {
		t.Fatalf("jobs of the period after restarts = %s, want 2", got)
	}
	if err := a.ReleaseEnded(ctx, ended("c", 2, 2)); err != nil {
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
	if _, err := a.AdmitRestart(ctx, ended("d", 1, 1), 2, qq); !errors.As(err, &pe) || pe.Type != quota.TypeQuantity {
		t.Fatalf("restart with the quantity used up: %v, want %s", err, quota.TypeQuantity)
	}
	// Without limits nothing is counted.
	if took, err := a.AdmitRestart(ctx, ended("e", 1, 1), 2, tenants.Quota{}); err != nil || took {
		t.Fatalf("restart without limits: took %v, %v", took, err)
	}
}

// restartThenReleaseLate admits job "j" of a tenant allowed one job at a
// time, restarts it as run after its first run ended as first, then
// releases that first run twice (late, then redelivered): each time the
// restarted run keeps the slot and a new job is refused.
func restartThenReleaseLate(t *testing.T, first *jobsv1.Job, run int32) (*quota.Admitter, tenants.Quota) {
	t.Helper()
	env := testsupport.Start(t)
	a := quota.New(env.EtcdCli)
	ctx := context.Background()
	q := tenants.Quota{MaxConcurrentJobs: 1}
	if err := a.Admit(ctx, "acme", "j", q); err != nil {
		t.Fatal(err)
	}
	if took, err := a.AdmitRestart(ctx, first, run, q); err != nil || !took {
		t.Fatalf("restart: took %v, %v", took, err)
	}
	for range 2 {
		if err := a.ReleaseEnded(ctx, first); err != nil {
			t.Fatal(err)
		}
		if n, _ := a.Active(ctx, "acme"); n != 1 {
			t.Fatalf("active after the first run's late release = %d, want 1 (the restarted run)", n)
		}
		if err := a.Admit(ctx, "acme", "k", q); err == nil {
			t.Fatal("a new job admitted beyond the limit while the restarted run goes on")
		}
	}
	return a, q
}

// The release of a run that ended, late or redelivered after its job was
// restarted, leaves the restarted run's slot held: the tenant stays at its
// limit while that run goes on, and gets the slot back at its end.
func TestLateReleaseLeavesTheRestartedRun(t *testing.T) {
	// The first run failed after three attempts (two lost their worker);
	// the restart adds attempt 4.
	a, q := restartThenReleaseLate(t, ended("j", 1, 3), 4)
	ctx := context.Background()
	// The restarted run ends: its record names attempt 4, or a retry's.
	if err := a.ReleaseEnded(ctx, ended("j", 4, 5)); err != nil {
		t.Fatal(err)
	}
	if n, _ := a.Active(ctx, "acme"); n != 0 {
		t.Fatalf("active after the restarted run ended = %d, want 0", n)
	}
	if err := a.Admit(ctx, "acme", "k", q); err != nil {
		t.Fatalf("slot not free after the restarted run ended: %v", err)
	}
}

// A job whose first run ended with no attempt (no service, canceled or
// past its deadline while queued) is restarted as attempt 1, the number of
// its first run: the first run's release, late, still leaves the
// restarted run's slot held, which the restarted run's end frees.
func TestLateReleaseOfARunWithNoAttempt(t *testing.T) {
	first := ended("j", 0, 0)
	a, q := restartThenReleaseLate(t, first, 1)
	ctx := context.Background()
	// The reconciliation reads when the restart's slot was taken.
	markers, err := a.Markers(ctx)
	if err != nil || len(markers) != 1 || markers[0].Run != 1 || time.Since(markers[0].Admitted) > time.Minute {
		t.Fatalf("markers after the restart = %+v, %v; want run 1, taken now", markers, err)
	}
	// A restart of the same run asked meanwhile finds it held.
	if took, err := a.AdmitRestart(ctx, first, 1, q); err != nil || took {
		t.Fatalf("second restart of the run: took %v, %v; want false, nil", took, err)
	}
	if n, _ := a.Active(ctx, "acme"); n != 1 {
		t.Fatalf("active after a second restart of the run = %d, want 1", n)
	}
	restarted := ended("j", 1, 1)
	restarted.Executions[0].Restarted = true
	if err := a.ReleaseEnded(ctx, restarted); err != nil {
		t.Fatal(err)
	}
	if n, _ := a.Active(ctx, "acme"); n != 0 {
		t.Fatalf("active after the restarted run ended = %d, want 0", n)
	}
	markers, err = a.Markers(ctx)
	if err != nil || len(markers) != 0 {
		t.Fatalf("markers after the restarted run ended = %+v, %v; want none", markers, err)
	}
}

// Restarts of one job asked at the same moment name the same run and take
// one slot between them, whichever goes ahead; releasing it is exact, so
// one taken and given back leaves the run before alone.
func TestConcurrentRestartsTakeOneSlot(t *testing.T) {
	env := testsupport.Start(t)
	a := quota.New(env.EtcdCli)
	ctx := context.Background()
	q := tenants.Quota{MaxConcurrentJobs: 10}
	if err := a.Admit(ctx, "acme", "j", q); err != nil {
		t.Fatal(err)
	}
	var took atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			ok, err := a.AdmitRestart(ctx, ended("j", 1, 1), 2, q)
			if err != nil {
				t.Errorf("restart: %v", err)
			}
			if ok {
				took.Add(1)
			}
		})
	}
	wg.Wait()
	if n, _ := a.Active(ctx, "acme"); n != 1 || took.Load() != 1 {
		t.Fatalf("active = %d, %d restarts took a slot; want 1 and 1", n, took.Load())
	}
	if err := a.ReleaseRun(ctx, "acme", "j", 3); err != nil { // a run never admitted
		t.Fatal(err)
	}
	if n, _ := a.Active(ctx, "acme"); n != 1 {
		t.Fatalf("active = %d after releasing a run holding none, want 1", n)
	}
	if err := a.ReleaseRun(ctx, "acme", "j", 2); err != nil {
		t.Fatal(err)
	}
	if n, _ := a.Active(ctx, "acme"); n != 0 {
		t.Fatalf("active = %d after the restart gave its slot back, want 0", n)
	}
}

// A marker written by an older mediator (one per job, naming no run) is
// freed by the job's end and by the reconciliation, counts against the
// limit, and gives way to a restart.
func TestOlderLayoutMarker(t *testing.T) {
	env := testsupport.Start(t)
	a := quota.New(env.EtcdCli)
	ctx := context.Background()
	q := tenants.Quota{MaxConcurrentJobs: 2}
	older := func(job string) {
		t.Helper()
		// What an older mediator's admission writes.
		n, _ := a.Active(ctx, "acme")
		if _, err := env.EtcdCli.Txn(ctx).Then(
			clientv3.OpPut(quota.LegacyMarkerKey("acme", job), time.Now().UTC().Format(time.RFC3339)),
			clientv3.OpPut(quota.ActiveKey("acme"), fmt.Sprint(n+1)),
		).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	held := func(job string) bool {
		t.Helper()
		resp, err := env.EtcdCli.Get(ctx, quota.LegacyMarkerKey("acme", job))
		if err != nil {
			t.Fatal(err)
		}
		return len(resp.Kvs) > 0
	}
	older("x")
	older("y")
	if err := a.Admit(ctx, "acme", "z", q); err == nil {
		t.Fatal("admitted beyond the limit with older markers holding it")
	}
	markers, err := a.Markers(ctx)
	if err != nil || len(markers) != 2 || markers[0].Run != 0 || markers[1].Run != 0 {
		t.Fatalf("markers = %+v, %v; want x and y of the older layout", markers, err)
	}
	// x ends: its hook frees its marker, once however often it runs.
	for range 2 {
		if err := a.ReleaseEnded(ctx, ended("x", 1, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if held("x") {
		t.Fatal("older marker of an ended job still held")
	}
	if n, _ := a.Active(ctx, "acme"); n != 1 {
		t.Fatalf("active = %d, want 1", n)
	}
	// y ended, its release lost, and is restarted: its run takes over.
	if took, err := a.AdmitRestart(ctx, ended("y", 1, 1), 2, q); err != nil || !took {
		t.Fatalf("restart: took %v, %v", took, err)
	}
	if held("y") {
		t.Fatal("older marker of a restarted job still held")
	}
	if n, _ := a.Active(ctx, "acme"); n != 1 {
		t.Fatalf("active = %d after the restart, want 1", n)
	}
	// As the reconciliation frees one: exactly.
	older("w")
	if err := a.ReleaseRun(ctx, "acme", "w", 0); err != nil {
		t.Fatal(err)
	}
	if held("w") {
		t.Fatal("older marker still held after its release")
	}
	if n, _ := a.Active(ctx, "acme"); n != 1 {
		t.Fatalf("active = %d, want 1 (y's restarted run)", n)
	}
}

// A job that left more markers than one transaction deletes has them all
// freed by its end.
func TestReleaseEndedFreesManyRuns(t *testing.T) {
	env := testsupport.Start(t)
	a := quota.New(env.EtcdCli)
	ctx := context.Background()
	const runs = 150
	for run := int32(1); run <= runs; run++ {
		if _, err := env.EtcdCli.Put(ctx, quota.MarkerKey("acme", "j", run), time.Now().UTC().Format(time.RFC3339)); err != nil {
			t.Fatal(err)
		}
	}
	// And one past the record: a restart's, held.
	if _, err := env.EtcdCli.Put(ctx, quota.MarkerKey("acme", "j", runs+1), time.Now().UTC().Format(time.RFC3339)); err != nil {
		t.Fatal(err)
	}
	if _, err := env.EtcdCli.Put(ctx, quota.ActiveKey("acme"), fmt.Sprint(runs+1)); err != nil {
		t.Fatal(err)
	}
	if err := a.ReleaseEnded(ctx, ended("j", 1, runs)); err != nil {
		t.Fatal(err)
	}
	markers, err := a.Markers(ctx)
	if n, _ := a.Active(ctx, "acme"); n != 1 || err != nil || len(markers) != 1 || markers[0].Run != runs+1 {
		t.Fatalf("active = %d, markers %+v (%v); want only run %d", n, markers, err, runs+1)
	}
}

// Marker.Ended tells a run over from the job's record.
func TestMarkerEnded(t *testing.T) {
	running := func(execs ...*jobsv1.Execution) *jobsv1.Job {
		return &jobsv1.Job{Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, Executions: execs}
	}
	ex := func(attempt int32, restarted bool) *jobsv1.Execution {
		return &jobsv1.Execution{Attempt: attempt, Restarted: restarted}
	}
	for _, c := range []struct {
		name  string
		run   int32
		job   *jobsv1.Job
		ended bool
	}{
		{"job gone", 1, nil, true},
		{"job ended", 3, ended("j", 3, 3), true},
		{"older marker, job ended", 0, ended("j", 1, 1), true},
		{"older marker, job running", 0, running(ex(1, false)), false},
		{"new job not yet dispatched", 1, &jobsv1.Job{Status: jobsv1.JobStatus_JOB_STATUS_QUEUED}, false},
		{"first run, retried", 1, running(ex(1, false), ex(2, false)), false},
		{"first run, job restarted since", 1, running(ex(1, false), ex(2, true)), true},
		{"restarted run", 2, running(ex(1, false), ex(2, true), ex(3, false)), false},
		{"restart that never moved the record", 4, running(ex(1, false), ex(2, true), ex(3, false)), true},
	} {
		m := quota.Marker{Tenant: "acme", Job: "j", Run: c.run}
		if got := m.Ended(c.job); got != c.ended {
			t.Errorf("%s: Ended = %v, want %v", c.name, got, c.ended)
		}
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
	holders := map[string]bool{}
	for _, m := range markers {
		if m.Tenant != "acme" || m.Run != quota.FirstRun {
			t.Errorf("marker %+v, want acme's first runs", m)
		}
		holders[m.Job] = true
	}
	for i := range 100 {
		if held := holders[fmt.Sprint(i)]; held != (i >= 60) {
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
