// Package quota admits jobs against a tenant's quota, atomically across
// mediator replicas, with etcd transactions: a submit reads the tenant's
// counters and commits its increment only if no counter changed meanwhile
// (compare-and-set on the mod revision), so 50 concurrent submits against a
// quota of 10 admit exactly 10. Each admitted run of a job holds a marker
// key that its release deletes in the same transaction as the decrement,
// so releasing a run twice (redelivered status events) frees one slot
// once. Concurrent admissions, and concurrent releases, of a tenant share
// one transaction (package groupcommit). A restarted job takes a concurrent
// slot again (AdmitRestart), but is no job of the period.
//
// A run is named by the attempt that starts it: 1 for a new job, the
// attempt its restart adds for a restarted one. Marking runs apart lets a
// restart race the release of the run before it: that release, late or
// redelivered, frees the runs its job record shows over (ReleaseEnded:
// those up to its latest attempt), never the restarted one, whose attempt
// is past them. Two restarts of one job at once name the same run, so take
// one slot between them. One number names two runs: a first run that ended
// with no attempt (no service, canceled or past its deadline while queued)
// is restarted as attempt 1. A restart's marker says it is one (its value
// ends in " restart"), so the end of a record with no attempt frees run 1
// only if it is the first run's.
//
// etcd keys (counters are decimal text):
//
//	/medius/quota/active/<tenant>                  non-terminal runs (both marker layouts)
//	/medius/quota/active-runs/<tenant>/<job>/<run> marker of an admitted run (value: "<when> <period counted>", e.g. "... day-20261202"; a restart's: "<when> restart")
//	/medius/quota/active-jobs/<tenant>/<job>       marker of an admitted job, older layout
//	/medius/quota/jobs/<tenant>/<period start>     jobs admitted in the period
//	/medius/quota/quantity/<tenant>/<period>       verified quantity used (package usage adds)
//
// Markers of the older layout (one per job whatever its run, written by
// mediators before run markers) count on the same active counter and are
// still released: by the job's terminal hook (ReleaseEnded) and by the
// quota reconciliation (Markers lists them as run 0). Run markers have a
// prefix of their own so that an older mediator's reconciliation never
// sees them: it would read <job>/<run> as a job it cannot find and delete
// the marker against another counter. An older mediator's terminal hook
// frees only the older marker, so a run admitted by a newer mediator and
// ended under an older one is freed by a newer one's reconciliation.
package quota

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/groupcommit"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Key prefixes.
const (
	activePrefix   = "/medius/quota/active/"
	markerPrefix   = "/medius/quota/active-runs/"
	legacyPrefix   = "/medius/quota/active-jobs/"
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

// MarkerKey marks run of job as holding one of tenant's concurrent slots.
func MarkerKey(tenant, job string, run int32) string {
	return runsPrefix(tenant, job) + strconv.FormatInt(int64(run), 10)
}

// runsPrefix is the prefix of job's run markers.
func runsPrefix(tenant, job string) string { return markerPrefix + tenant + "/" + job + "/" }

// LegacyMarkerKey marks job as holding a slot in the older layout, which
// names no run (see the package doc).
func LegacyMarkerKey(tenant, job string) string { return legacyPrefix + tenant + "/" + job }

// FirstRun is the run of a new job: its first attempt.
const FirstRun int32 = 1

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
	// contending for its counters one at a time. Items are marker keys.
	batches *groupcommit.Group[batchKey, string]
	// Likewise releases, per tenant: jobs of a tenant ending together
	// would otherwise each retry on the active counter the others moved.
	releases *groupcommit.Group[string, release]
}

type batchKey struct {
	tenant string
	q      tenants.Quota
	// restart: the jobs run again (AdmitRestart), not new ones.
	restart bool
}

// release names the markers a release frees.
type release struct {
	job string
	run int32
	// ended: the markers of every run of job up to run, and its marker of
	// the older layout; else run's alone (0: the older layout's).
	ended bool
	// firstOnly: of the run markers, the first run's alone, not a
	// restart's of the same number (the record ended made no attempt).
	firstOnly bool
}

// restartTag ends the value of a restart's marker (after when it was
// taken), telling it from the first run's of the same number.
const restartTag = " restart"

// maxBatch bounds one admission transaction: it reads 3 counters and one
// marker per job, and compares and writes as many, within etcd's default
// limit of 128 operations per transaction.
const maxBatch = 100

// maxReleaseBatch bounds one release transaction likewise: it reads the
// active counter and, per release of an ended job, the job's run markers
// and its older marker (1 + 2×60 reads).
const maxReleaseBatch = 60

// maxDeletes bounds the markers one release transaction deletes (with the
// counter's write); more, should a job have left many, take another.
const maxDeletes = 100

// New uses cli. Batching happens within one Admitter: a process makes one
// and shares it.
func New(cli *clientv3.Client) *Admitter {
	a := &Admitter{cli: cli, now: time.Now}
	a.batches = groupcommit.New(maxBatch, 15*time.Second, a.admitBatch)
	a.releases = groupcommit.New(maxReleaseBatch, 15*time.Second, a.releaseBatch)
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

// Admit takes one of tenant's slots for job, new (its first run), or
// refuses with ResourceExhausted naming the quota reached. Admitting the
// same job twice takes one slot. A quota without limits admits at once.
func (a *Admitter) Admit(ctx context.Context, tenant, job string, q tenants.Quota) error {
	if !limited(q) {
		return nil
	}
	return a.batches.Do(ctx, batchKey{tenant: tenant, q: q}, MarkerKey(tenant, job, FirstRun))
}

// errHeld: a restarted run whose slot is taken already.
var errHeld = errors.New("slot held already")

// AdmitRestart takes one of tenant's concurrent slots for run of the job
// ended, run again by a restart, or refuses with ResourceExhausted as Admit
// does when the tenant has as many jobs running as its limit, or has used
// its period's quantity (the new run, completed, adds to it). Unlike Admit
// it neither counts a job of the period nor is refused for the period's
// job count: a job completes, and its usage is recorded, at most once
// however often it is restarted, so restarts get no more jobs done than the
// period allows, and what they cost the platform at once the concurrent
// slot bounds.
//
// ended is the job's record as the restart found it, ended; run is the
// attempt the restart adds, which must be past ended's (else the late
// release of the run before would free it). The runs ended shows over give
// their slots back first (ReleaseEnded), as the status consumer's terminal
// hook does, which may not have yet: a restart is not refused for the slot
// of its own run before.
//
// It reports whether it took a slot: not when the tenant has no limits, nor
// when run holds one already (a restart of the same run asked at the same
// moment took it, for whichever of the two goes ahead). Only a slot taken
// is to be released (ReleaseRun) should the restart not happen.
func (a *Admitter) AdmitRestart(ctx context.Context, ended *jobsv1.Job, run int32, q tenants.Quota) (bool, error) {
	if !limited(q) {
		return false, nil
	}
	if err := a.ReleaseEnded(ctx, ended); err != nil {
		return false, err
	}
	tenant := ended.GetTenant()
	err := a.batches.Do(ctx, batchKey{tenant, q, true}, MarkerKey(tenant, ended.GetId(), run))
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

// admitBatch admits batch's runs (their marker keys) in order, as far as
// the quota goes, in one transaction that commits only if no counter
// changed meanwhile (another replica); on a conflict it reads again and
// retries. Restarted runs (k.restart) take a concurrent slot only: the
// period's job count is neither checked nor written.
func (a *Admitter) admitBatch(ctx context.Context, k batchKey, batch []string) []error {
	tenant, q := k.tenant, k.q
	check := q
	if k.restart {
		check.MaxJobsPerPeriod = 0
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
	lost := false // an admission's answer was lost: read back next
	for {
		clear(errs)
		// One clock read per try: the period counted and the markers'
		// time (which Unadmit counts back from) must agree, across a
		// midnight too.
		now := a.now()
		pid := PeriodID(q.Period, now)
		keys := append([]string{ActiveKey(tenant), JobsKey(tenant, pid), QuantityKey(tenant, pid)}, batch...)
		var cs []counter
		var err error
		if lost {
			cs, err = a.readBack(ctx, keys)
		} else {
			cs, err = a.read(ctx, keys...)
		}
		if err != nil {
			return fail(err)
		}
		active, jobs, quantity := cs[0], cs[1], cs[2]
		cmps := []clientv3.Cmp{unchanged(active)}
		if !k.restart {
			cmps = append(cmps, unchanged(jobs))
		}
		var ops []clientv3.Op
		// A new job's marker names the period it is counted in, which
		// Unadmit takes it off again, whatever the tenant's period is by
		// then.
		value := now.UTC().Format(time.RFC3339) + " " + pid
		if k.restart {
			value = now.UTC().Format(time.RFC3339) + restartTag
		}
		first := map[string]int{} // a run asked twice in one batch takes one slot
		admitted := 0.0
		for i, marker := range batch {
			if j, dup := first[marker]; dup {
				errs[i] = errs[j]
				continue
			}
			first[marker] = i
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
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(marker), "=", 0))
			ops = append(ops, clientv3.OpPut(marker, value))
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
			// No answer is not no admission: the transaction may have
			// been applied (a reset connection, an answer past the
			// batch's timeout). Taken for a failure, its jobs would not
			// be created while their slots and period counts stayed
			// taken. So it is read again, once: markers there are
			// admitted (new jobs' ids are this call's alone; a
			// restart's run holds its slot, whoever took it: errHeld),
			// and markers absent are tried again.
			if lost {
				return fail(fmt.Errorf("admit %d runs of tenant %s: %w", int(admitted), tenant, err))
			}
			lost = true
			continue
		}
		if resp.Succeeded {
			return errs
		}
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
	}
}

// readBackWait bounds the read after an admission whose answer was lost:
// the batch's own timeout may be what ended it.
const readBackWait = 5 * time.Second

// readBack reads keys after an admission whose answer was lost, trying
// again until readBackWait has passed: the etcd client retries no
// transaction, and the connection that lost the answer may be coming
// back.
func (a *Admitter) readBack(ctx context.Context, keys []string) ([]counter, error) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), readBackWait)
	defer cancel()
	for {
		cs, err := a.read(rctx, keys...)
		if err == nil {
			return cs, nil
		}
		select {
		case <-rctx.Done():
			return nil, err
		case <-time.After(readBackPause):
		}
	}
}

// readBackPause spaces readBack's tries.
const readBackPause = 100 * time.Millisecond

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

// CurrentRun is the run job's record is in: the attempt of its latest
// execution marked restarted, else the first. (A record written through a
// processor that does not mark restarts names an earlier run: callers only
// free slots of runs before it, so that errs on the side of holding.)
func CurrentRun(job *jobsv1.Job) int32 {
	run := FirstRun
	for _, ex := range job.GetExecutions() {
		if ex.GetRestarted() {
			run = max(run, ex.GetAttempt())
		}
	}
	return run
}

// ReleaseEnded frees the slots of the runs job's record, ended, shows over:
// every run started at or before its latest attempt (at least the first),
// and the job's marker of the older layout; a record not ended frees
// nothing. It is the status consumer's terminal hook: run late or again,
// after the job was restarted, it leaves the restarted run's slot alone,
// since that run's attempt is past the record's. A record with no attempt
// at all is the first run's, restarted (if it was) as attempt 1, the first
// run's number: it frees the first run's marker only, not the restart's.
// Runs holding no slot (never admitted, or released already) free nothing.
//
// The older marker names no run: freed here whatever run it served, it is
// exposed to the race run markers close, until no mediator writes it.
func (a *Admitter) ReleaseEnded(ctx context.Context, job *jobsv1.Job) error {
	if !jobstate.IsTerminal(job.GetStatus()) {
		return nil
	}
	last := jobstate.LatestAttempt(job)
	return a.releases.Do(ctx, job.GetTenant(), release{job: job.GetId(), run: max(last, FirstRun), ended: true, firstOnly: last == 0})
}

// Unadmit undoes Admit for a job that is not created after all (its
// record not stored, a repeat of a request whose first job won): its slot
// is freed and, unlike a release, the job it counted of its period is
// taken off again, so a tenant's retries do not use up its period. The
// count taken off is that of the period the marker names; a marker written
// before markers named one is counted back in period (the tenant's,
// tenants.Quota.Period) holding its admission. Only the call that deletes
// the marker gives the count back: Unadmit is idempotent.
func (a *Admitter) Unadmit(ctx context.Context, tenant, job, period string) error {
	marker := MarkerKey(tenant, job, FirstRun)
	for {
		got, err := a.cli.Get(ctx, marker)
		if err != nil {
			return fmt.Errorf("undo admission of job %s: %w", job, err)
		}
		if len(got.Kvs) == 0 || strings.HasSuffix(string(got.Kvs[0].Value), restartTag) {
			return nil // never admitted, undone already, or a restart's
		}
		held := got.Kvs[0]
		cs, err := a.read(ctx, ActiveKey(tenant), JobsKey(tenant, a.countedIn(string(held.Value), period)))
		if err != nil {
			return fmt.Errorf("undo admission of job %s: %w", job, err)
		}
		active, jobs := cs[0], cs[1]
		tr, err := a.cli.Txn(ctx).
			If(unchanged(active), unchanged(jobs), clientv3.Compare(clientv3.ModRevision(marker), "=", held.ModRevision)).
			Then(clientv3.OpDelete(marker), clientv3.OpPut(active.key, itoa(max(active.val-1, 0))), clientv3.OpPut(jobs.key, itoa(max(jobs.val-1, 0)))).
			Commit()
		if err != nil {
			return fmt.Errorf("undo admission of job %s: %w", job, err)
		}
		if tr.Succeeded {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// countedIn is the period a new job's marker value (see admitBatch) counted
// its job in; for a marker that names none, the one of period holding
// the marker's time.
func (a *Admitter) countedIn(value, period string) string {
	when, pid, _ := strings.Cut(value, " ")
	if strings.HasPrefix(pid, "day-") || strings.HasPrefix(pid, "month-") {
		return pid
	}
	at, err := time.Parse(time.RFC3339, when)
	if err != nil {
		at = a.now()
	}
	return PeriodID(period, at)
}

// ReleaseRun frees the slot of run of job (0: its marker of the older
// layout) alone, if it holds one: an admission whose job or restart did
// not happen, or a marker the reconciliation found over (Marker.Ended).
func (a *Admitter) ReleaseRun(ctx context.Context, tenant, job string, run int32) error {
	return a.releases.Do(ctx, tenant, release{job: job, run: run})
}

// Release frees every slot job holds, whatever its runs: for a job that
// will not run again (gone). A job that ended may be restarted: its
// terminal hook is ReleaseEnded.
func (a *Admitter) Release(ctx context.Context, tenant, job string) error {
	return a.releases.Do(ctx, tenant, release{job: job, run: math.MaxInt32, ended: true})
}

// releaseBatch frees the slots batch's releases name, of the runs that
// hold one, in one transaction deleting their markers and taking their
// count off the active counter. It commits only if neither the counter nor
// a marker changed meanwhile (an admission, another replica's release);
// else it reads again. Every admission moves the counter, so a marker a
// ranged read missed could not appear unnoticed either.
func (a *Admitter) releaseBatch(ctx context.Context, tenant string, batch []release) []error {
	reads := []clientv3.Op{clientv3.OpGet(ActiveKey(tenant))}
	// upTo is, per read after the counter, the last run whose marker it
	// frees: a ranged read of a job's runs finds later ones too (a
	// restart's). Exact reads free what they find. firstOnly, per read,
	// leaves restarts' markers alone.
	var upTo []int32
	var firstOnly []bool
	asked := map[release]bool{} // a run released twice in one batch frees one slot
	for _, r := range batch {
		if asked[r] {
			continue
		}
		asked[r] = true
		switch {
		case r.ended:
			reads = append(reads, clientv3.OpGet(runsPrefix(tenant, r.job), clientv3.WithPrefix()), clientv3.OpGet(LegacyMarkerKey(tenant, r.job)))
			upTo = append(upTo, r.run, math.MaxInt32)
			firstOnly = append(firstOnly, r.firstOnly, false)
		case r.run == 0:
			reads = append(reads, clientv3.OpGet(LegacyMarkerKey(tenant, r.job)))
			upTo = append(upTo, math.MaxInt32)
			firstOnly = append(firstOnly, false)
		default:
			reads = append(reads, clientv3.OpGet(MarkerKey(tenant, r.job, r.run)))
			upTo = append(upTo, math.MaxInt32)
			firstOnly = append(firstOnly, false)
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
		resp, err := a.cli.Txn(ctx).Then(reads...).Commit()
		if err != nil {
			return fail(fmt.Errorf("read quota markers of tenant %s: %w", tenant, err))
		}
		active := counter{key: ActiveKey(tenant)}
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			active.rev = kvs[0].ModRevision
			active.val, _ = strconv.ParseFloat(string(kvs[0].Value), 64)
		}
		held := map[string]int64{} // marker key: mod revision
		for i, r := range resp.Responses[1:] {
			for _, kv := range r.GetResponseRange().GetKvs() {
				key := string(kv.Key)
				if upTo[i] != math.MaxInt32 {
					run, err := strconv.ParseInt(key[strings.LastIndexByte(key, '/')+1:], 10, 32)
					if err != nil || int32(run) > upTo[i] {
						continue
					}
				}
				if firstOnly[i] && strings.HasSuffix(string(kv.Value), restartTag) {
					continue
				}
				held[key] = kv.ModRevision
			}
		}
		if len(held) == 0 {
			return errs
		}
		markers := make([]string, 0, len(held))
		for k := range held {
			markers = append(markers, k)
		}
		slices.Sort(markers)
		more := len(markers) > maxDeletes
		markers = markers[:min(len(markers), maxDeletes)]
		cmps := []clientv3.Cmp{unchanged(active)}
		ops := make([]clientv3.Op, 0, len(markers)+1)
		for _, m := range markers {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(m), "=", held[m]))
			ops = append(ops, clientv3.OpDelete(m))
		}
		ops = append(ops, clientv3.OpPut(active.key, itoa(max(active.val-float64(len(markers)), 0))))
		tr, err := a.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return fail(fmt.Errorf("release %d runs of tenant %s: %w", len(markers), tenant, err))
		}
		if tr.Succeeded && !more {
			return errs
		}
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
	}
}

// Active returns the tenant's count of non-terminal admitted runs.
func (a *Admitter) Active(ctx context.Context, tenant string) (int64, error) {
	cs, err := a.read(ctx, ActiveKey(tenant))
	if err != nil {
		return 0, err
	}
	return int64(cs[0].val), nil
}

// Marker is a slot held by Run of a job (0: a marker of the older layout,
// which names no run), taken at Admitted.
type Marker struct {
	Tenant, Job string
	Run         int32
	Admitted    time.Time
}

// Ended reports whether the run m marks is over, as its job's record tells
// (nil: the job is gone): the job ended, or it runs again as a later run
// than m's, or m's run is past any attempt the record knows (a restart
// that never moved it). An older-layout marker is over once its job is.
// A marker over, and too old to be an admission whose job or restart is
// still being written, holds a slot no run uses.
func (m Marker) Ended(job *jobsv1.Job) bool {
	if job == nil || jobstate.IsTerminal(job.GetStatus()) {
		return true
	}
	if m.Run == 0 {
		return false
	}
	return m.Run < CurrentRun(job) || m.Run > max(jobstate.LatestAttempt(job), FirstRun)
}

// Markers returns the slots held, of both layouts, with when they were
// taken (for reconciliation of slots whose run is over with its release
// lost). Keys it cannot read are left out.
func (a *Admitter) Markers(ctx context.Context) ([]Marker, error) {
	var out []Marker
	for _, prefix := range []string{markerPrefix, legacyPrefix} {
		resp, err := a.cli.Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			return nil, fmt.Errorf("list quota markers: %w", err)
		}
		for _, kv := range resp.Kvs {
			m, ok := parseMarker(prefix, string(kv.Key))
			if !ok {
				continue
			}
			when, _, _ := strings.Cut(string(kv.Value), " ")
			m.Admitted, _ = time.Parse(time.RFC3339, when)
			out = append(out, m)
		}
	}
	return out, nil
}

// parseMarker reads key, under prefix: <tenant>/<job>/<run> for run
// markers, <tenant>/<job> for older ones.
func parseMarker(prefix, key string) (Marker, bool) {
	rest := key[len(prefix):]
	var m Marker
	if prefix == markerPrefix {
		i := strings.LastIndexByte(rest, '/')
		run, err := strconv.ParseInt(rest[i+1:], 10, 32)
		if i < 0 || err != nil || run <= 0 {
			return m, false
		}
		m.Run, rest = int32(run), rest[:i]
	}
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 || i == len(rest)-1 {
		return m, false
	}
	m.Tenant, m.Job = rest[:i], rest[i+1:]
	return m, true
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

// Unadmit implements jobapi.Admission: Admitter.Unadmit with the tenant's
// period.
func (t TenantAdmitter) Unadmit(ctx context.Context, tenant, job string) error {
	q, err := t.Tenants.Quota(ctx, tenant)
	if err != nil && !errors.Is(err, tenants.ErrTenantNotFound) {
		return err
	}
	return t.Admitter.Unadmit(ctx, tenant, job, q.Period)
}

// AdmitRestart implements jobapi.Admission, as Admit does for new jobs.
func (t TenantAdmitter) AdmitRestart(ctx context.Context, ended *jobsv1.Job, run int32) (bool, error) {
	q, err := t.Tenants.Quota(ctx, ended.GetTenant())
	if err != nil && !errors.Is(err, tenants.ErrTenantNotFound) {
		return false, err
	}
	return t.Admitter.AdmitRestart(ctx, ended, run, q)
}
