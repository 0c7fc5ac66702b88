// Package quota admits jobs against a tenant's quota, atomically across
// mediator replicas, with etcd transactions: a submit reads the tenant's
// counters and commits its increment only if no counter changed meanwhile
// (compare-and-set on the mod revision), so 50 concurrent submits against a
// quota of 10 admit exactly 10. Each admitted job holds a marker key that its
// release deletes in the same transaction as the decrement, so releasing a
// job twice (redelivered status events) frees one slot once. Concurrent
// admissions, and concurrent releases, of a tenant share one transaction
// (package groupcommit). A restarted job takes a concurrent slot again
// (AdmitRestart), but is no job of the period.
//
// etcd keys (counters are decimal text):
//
//	/medius/quota/active/<tenant>               non-terminal jobs
//	/medius/quota/active-jobs/<tenant>/<job>    marker of an admitted job
//	/medius/quota/jobs/<tenant>/<period start>  jobs admitted in the period
//	/medius/quota/quantity/<tenant>/<period>    verified quantity used (package usage adds)
package quota

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/groupcommit"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Key prefixes.
const (
	activePrefix   = "/medius/quota/active/"
	markerPrefix   = "/medius/quota/active-jobs/"
	jobsPrefix     = "/medius/quota/jobs/"
	quantityPrefix = "/medius/quota/quantity/"
)

// Problem types naming the quota a refusal is about.
const (
	TypeConcurrent = "quota-max-concurrent-jobs"
	TypeJobs       = "quota-max-jobs-per-period"
	TypeQuantity   = "quota-max-quantity-per-period"
)

// ActiveKey is the tenant's non-terminal job counter.
func ActiveKey(tenant string) string { return activePrefix + tenant }

// MarkerKey marks job as holding one of tenant's concurrent slots.
func MarkerKey(tenant, job string) string { return markerPrefix + tenant + "/" + job }

// PeriodID names the day or month holding t: "day-20261125", "month-202611".
func PeriodID(period string, t time.Time) string {
	t = t.UTC()
	if period == tenants.PeriodDay {
		return "day-" + t.Format("20060102")
	}
	return "month-" + t.Format("200601")
}

// JobsKey counts the jobs admitted in a period (PeriodID).
func JobsKey(tenant, periodID string) string { return jobsPrefix + tenant + "/" + periodID }

// QuantityKey sums the verified quantity used in a period (PeriodID). Usage
// adds to both the day and the month holding the job's end, so a quota can
// count over either.
func QuantityKey(tenant, periodID string) string { return quantityPrefix + tenant + "/" + periodID }

// Admitter checks and counts admissions.
type Admitter struct {
	cli *clientv3.Client
	now func() time.Time
	// Concurrent admissions of a tenant under the same quota share one
	// transaction, so they cost one etcd write between them instead of
	// contending for its counters one at a time.
	batches *groupcommit.Group[batchKey, string]
	// Likewise releases, per tenant: jobs of a tenant ending together
	// would otherwise each retry on the active counter the others moved.
	releases *groupcommit.Group[string, string]
}

type batchKey struct {
	tenant string
	q      tenants.Quota
	// restart: the jobs run again (AdmitRestart), not new ones.
	restart bool
}

// maxBatch bounds one transaction: it reads 3 counters (a release: 1) and
// one marker per job, and compares and writes as many, within etcd's
// default limit of 128 operations per transaction.
const maxBatch = 100

// New uses cli. Batching happens within one Admitter: a process makes one
// and shares it.
func New(cli *clientv3.Client) *Admitter {
	a := &Admitter{cli: cli, now: time.Now}
	a.batches = groupcommit.New(maxBatch, 15*time.Second, a.admitBatch)
	a.releases = groupcommit.New(maxBatch, 15*time.Second, a.releaseBatch)
	return a
}

type counter struct {
	key string
	val float64
	rev int64 // mod revision, 0 when absent
}

func (a *Admitter) read(ctx context.Context, keys ...string) ([]counter, error) {
	ops := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		ops[i] = clientv3.OpGet(k)
	}
	resp, err := a.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("read quota counters: %w", err)
	}
	out := make([]counter, len(keys))
	for i, r := range resp.Responses {
		out[i].key = keys[i]
		if kvs := r.GetResponseRange().GetKvs(); len(kvs) > 0 {
			out[i].rev = kvs[0].ModRevision
			out[i].val, _ = strconv.ParseFloat(string(kvs[0].Value), 64)
		}
	}
	return out, nil
}

func unchanged(c counter) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(c.key), "=", c.rev)
}

func itoa(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// Admit takes one of tenant's slots for job, or refuses with
// ResourceExhausted naming the quota reached. Admitting the same job twice
// takes one slot. A quota without limits admits at once.
func (a *Admitter) Admit(ctx context.Context, tenant, job string, q tenants.Quota) error {
	if !limited(q) {
		return nil
	}
	return a.batches.Do(ctx, batchKey{tenant: tenant, q: q}, job)
}

// errHeld: a restarted job that still holds the slot of its run before.
var errHeld = errors.New("slot held already")

// AdmitRestart takes one of tenant's concurrent slots for job, run again by
// a restart, or refuses with ResourceExhausted as Admit does when the
// tenant has as many jobs running as its limit, or has used its period's
// quantity (the new run, completed, adds to it). Unlike Admit it neither
// counts a job of the period nor is refused for the period's job count: a
// job completes, and its usage is recorded, at most once however often it
// is restarted, so restarts get no more jobs done than the period allows,
// and what they cost the platform at once the concurrent slot bounds.
//
// It reports whether it took a slot: not when the tenant has no limits, nor
// when job still holds the slot of its run before (its release not done
// yet), which then serves the new run. Only a slot taken is to be
// released should the restart not happen.
func (a *Admitter) AdmitRestart(ctx context.Context, tenant, job string, q tenants.Quota) (bool, error) {
	if !limited(q) {
		return false, nil
	}
	err := a.batches.Do(ctx, batchKey{tenant, q, true}, job)
	if errors.Is(err, errHeld) {
		return false, nil
	}
	return err == nil, err
}

// limited tells whether q bounds anything. A tenant without limits is
// admitted without counting (nothing to check, so no etcd write per job);
// limits set later count the jobs admitted from then on.
func limited(q tenants.Quota) bool {
	return q.MaxConcurrentJobs > 0 || q.MaxJobsPerPeriod > 0 || q.MaxQuantityPerPeriod > 0
}

// admitBatch admits batch's jobs in order, as far as the quota goes, in one
// transaction that commits only if no counter changed meanwhile (another
// replica); on a conflict it reads again and retries. Restarted jobs
// (k.restart) take a concurrent slot only: the period's job count is
// neither checked nor written.
func (a *Admitter) admitBatch(ctx context.Context, k batchKey, batch []string) []error {
	tenant, q := k.tenant, k.q
	check := q
	if k.restart {
		check.MaxJobsPerPeriod = 0
	}
	pid := PeriodID(q.Period, a.now())
	keys := []string{ActiveKey(tenant), JobsKey(tenant, pid), QuantityKey(tenant, pid)}
	for _, job := range batch {
		keys = append(keys, MarkerKey(tenant, job))
	}
	errs := make([]error, len(batch))
	fail := func(err error) []error {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return errs
	}
	for {
		clear(errs)
		cs, err := a.read(ctx, keys...)
		if err != nil {
			return fail(err)
		}
		active, jobs, quantity := cs[0], cs[1], cs[2]
		cmps := []clientv3.Cmp{unchanged(active)}
		if !k.restart {
			cmps = append(cmps, unchanged(jobs))
		}
		var ops []clientv3.Op
		first := map[string]int{} // a job asked twice in one batch takes one slot
		admitted := 0.0
		for i, job := range batch {
			if j, dup := first[job]; dup {
				errs[i] = errs[j]
				continue
			}
			first[job] = i
			if cs[3+i].rev != 0 {
				if k.restart {
					errs[i] = errHeld
				}
				continue // already admitted
			}
			if errs[i] = refusal(tenant, check, active.val+admitted, jobs.val+admitted, quantity.val); errs[i] != nil {
				continue
			}
			admitted++
			marker := keys[3+i]
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(marker), "=", 0))
			ops = append(ops, clientv3.OpPut(marker, a.now().UTC().Format(time.RFC3339)))
		}
		if admitted == 0 {
			return errs
		}
		ops = append(ops, clientv3.OpPut(active.key, itoa(active.val+admitted)))
		if !k.restart {
			ops = append(ops, clientv3.OpPut(jobs.key, itoa(jobs.val+admitted)))
		}
		resp, err := a.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return fail(fmt.Errorf("admit %d jobs of tenant %s: %w", int(admitted), tenant, err))
		}
		if resp.Succeeded {
			return errs
		}
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
	}
}

// refusal names the quota one more job would exceed, or is nil.
func refusal(tenant string, q tenants.Quota, active, jobs, quantity float64) error {
	switch {
	case q.MaxConcurrentJobs > 0 && active >= float64(q.MaxConcurrentJobs):
		return problem.ResourceExhausted(TypeConcurrent,
			fmt.Sprintf("quota maxConcurrentJobs reached: tenant %s has %d jobs running, the limit is %d", tenant, int64(active), q.MaxConcurrentJobs))
	case q.MaxJobsPerPeriod > 0 && jobs >= float64(q.MaxJobsPerPeriod):
		return problem.ResourceExhausted(TypeJobs,
			fmt.Sprintf("quota maxJobsPerPeriod reached: tenant %s submitted %d jobs this %s, the limit is %d", tenant, int64(jobs), period(q), q.MaxJobsPerPeriod))
	case q.MaxQuantityPerPeriod > 0 && quantity >= q.MaxQuantityPerPeriod:
		return problem.ResourceExhausted(TypeQuantity,
			fmt.Sprintf("quota maxQuantityPerPeriod reached: tenant %s used %g of %g this %s", tenant, quantity, q.MaxQuantityPerPeriod, period(q)))
	}
	return nil
}

func period(q tenants.Quota) string {
	if q.Period == "" {
		return tenants.PeriodMonth
	}
	return q.Period
}

// Release frees job's concurrent slot; releasing a job that holds none (never
// admitted, or already released) does nothing.
func (a *Admitter) Release(ctx context.Context, tenant, job string) error {
	return a.releases.Do(ctx, tenant, job)
}

// releaseBatch frees the slots of batch's jobs that hold one, in one
// transaction deleting their markers and taking their count off the active
// counter. It commits only if neither the counter nor a marker changed
// meanwhile (an admission, another replica's release); else it reads again.
func (a *Admitter) releaseBatch(ctx context.Context, tenant string, batch []string) []error {
	keys := []string{ActiveKey(tenant)}
	asked := map[string]bool{} // a job released twice in one batch frees one slot
	for _, job := range batch {
		if !asked[job] {
			asked[job] = true
			keys = append(keys, MarkerKey(tenant, job))
		}
	}
	errs := make([]error, len(batch))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	for {
		cs, err := a.read(ctx, keys...)
		if err != nil {
			return fail(err)
		}
		active := cs[0]
		cmps := []clientv3.Cmp{unchanged(active)}
		var ops []clientv3.Op
		for _, marker := range cs[1:] {
			if marker.rev == 0 {
				continue // holds no slot
			}
			cmps = append(cmps, unchanged(marker))
			ops = append(ops, clientv3.OpDelete(marker.key))
		}
		if len(ops) == 0 {
			return errs
		}
		ops = append(ops, clientv3.OpPut(active.key, itoa(max(active.val-float64(len(ops)), 0))))
		resp, err := a.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return fail(fmt.Errorf("release %d jobs of tenant %s: %w", len(ops)-1, tenant, err))
		}
		if resp.Succeeded {
			return errs
		}
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
	}
}

// Active returns the tenant's count of non-terminal admitted jobs.
func (a *Admitter) Active(ctx context.Context, tenant string) (int64, error) {
	cs, err := a.read(ctx, ActiveKey(tenant))
	if err != nil {
		return 0, err
	}
	return int64(cs[0].val), nil
}

// Markers returns the jobs holding a slot of tenant, with when they were
// admitted (for reconciliation of slots whose job never got stored).
func (a *Admitter) Markers(ctx context.Context) (map[[2]string]time.Time, error) {
	resp, err := a.cli.Get(ctx, markerPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list quota markers: %w", err)
	}
	out := map[[2]string]time.Time{}
	for _, kv := range resp.Kvs {
		rest := string(kv.Key)[len(markerPrefix):]
		for i := len(rest) - 1; i >= 0; i-- {
			if rest[i] == '/' {
				t, _ := time.Parse(time.RFC3339, string(kv.Value))
				out[[2]string{rest[:i], rest[i+1:]}] = t
				break
			}
		}
	}
	return out, nil
}

// QuantityKeys are the tenant's day and month quantity counters holding t:
// usage adds a job's quantity to both, in the transaction that records the
// usage, so both happen exactly once. Counters are decimal text.
func QuantityKeys(tenant string, t time.Time) [2]string {
	return [2]string{QuantityKey(tenant, PeriodID(tenants.PeriodDay, t)), QuantityKey(tenant, PeriodID(tenants.PeriodMonth, t))}
}

// TenantAdmitter admits against each tenant's configured quota.
type TenantAdmitter struct {
	*Admitter
	Tenants *tenants.Store
}

// Admit implements jobapi.Admission. A tenant without a record (a key
// registered before tenants existed) has no quota. The limits are read from
// the tenants' cache (tenants.Store.Quota: a change through another replica
// applies within tenants.QuotaTTL); the counters, from etcd, atomically.
func (t TenantAdmitter) Admit(ctx context.Context, tenant, job string) error {
	q, err := t.Tenants.Quota(ctx, tenant)
	if err != nil && !errors.Is(err, tenants.ErrTenantNotFound) {
		return err
	}
	return t.Admitter.Admit(ctx, tenant, job, q)
}

// AdmitRestart implements jobapi.Admission, as Admit does for new jobs.
func (t TenantAdmitter) AdmitRestart(ctx context.Context, tenant, job string) (bool, error) {
	q, err := t.Tenants.Quota(ctx, tenant)
	if err != nil && !errors.Is(err, tenants.ErrTenantNotFound) {
		return false, err
	}
	return t.Admitter.AdmitRestart(ctx, tenant, job, q)
}
