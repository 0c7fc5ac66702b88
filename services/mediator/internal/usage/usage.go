// Package usage records, once per completed job, the verified quantity its
// worker reported (seconds of media for media profiles), and aggregates the
// records for billing. A record is created in an etcd transaction that also
// adds the quantity to the tenant's quota counters and only succeeds if the
// record does not exist yet: status events redelivered, or a job retried on
// another worker, never bill twice. Records of a tenant made concurrently
// share one transaction (package groupcommit): jobs of a tenant ending
// together would otherwise each retry on the counters the others moved.
//
// etcd key: /medius/usage/<tenant>/<job id> -> Record (JSON).
package usage

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/services/mediator/internal/groupcommit"
	"github.com/medius-platform/medius/services/mediator/internal/quota"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Prefix of usage records.
const Prefix = "/medius/usage/"

// Record is the billable use of one completed job.
type Record struct {
	JobID      string    `json:"jobId"`
	Tenant     string    `json:"tenant"`
	Profile    string    `json:"profile"`
	Service    string    `json:"service,omitempty"`
	Quantity   float64   `json:"quantity"`
	CreateTime time.Time `json:"createTime"`
	EndTime    time.Time `json:"endTime"`
}

// Store keeps usage records in etcd.
type Store struct {
	cli     *clientv3.Client
	batches *groupcommit.Group[counterKeys, *pending]
}

// counterKeys are the day and month quantity counters a record adds to
// (quota.QuantityKeys). Records are batched per pair, so a batch's
// transaction compares and writes two counters whatever its size.
type counterKeys [2]string

// pending is a record waiting for its batch's commit.
type pending struct {
	key      string
	data     string
	quantity float64
	// created is set by the commit that created the record; read by the
	// caller once its batch answered.
	created bool
}

// maxBatch bounds one transaction: it reads 2 counters and one record per
// job, and compares and writes as many, within etcd's default limit of 128
// operations per transaction.
const maxBatch = 100

// New uses cli. Batching happens within one Store: a process makes one and
// shares it.
func New(cli *clientv3.Client) *Store {
	s := &Store{cli: cli}
	s.batches = groupcommit.New(maxBatch, 15*time.Second, s.recordBatch)
	return s
}

func key(tenant, job string) string { return Prefix + tenant + "/" + job }

// RecordJob records job's usage if it completed and has no record yet. It
// reports whether this call created the record.
func (s *Store) RecordJob(ctx context.Context, job *jobsv1.Job) (bool, error) {
	if job.GetStatus() != jobsv1.JobStatus_JOB_STATUS_COMPLETED {
		return false, nil
	}
	rec := Record{
		JobID: job.GetId(), Tenant: job.GetTenant(), Profile: job.GetProfile(), Quantity: job.GetVerifiedQuantity(),
		CreateTime: job.GetCreateTime().AsTime().UTC(), EndTime: job.GetEndTime().AsTime().UTC(),
	}
	if job.GetEndTime() == nil {
		rec.EndTime = job.GetUpdateTime().AsTime().UTC()
	}
	if n := len(job.GetExecutions()); n > 0 {
		rec.Service = job.GetExecutions()[n-1].GetService()
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return false, fmt.Errorf("encode usage of job %s: %w", rec.JobID, err)
	}
	p := &pending{key: key(rec.Tenant, rec.JobID), data: string(data), quantity: rec.Quantity}
	if err := s.batches.Do(ctx, quota.QuantityKeys(rec.Tenant, rec.EndTime), p); err != nil {
		return false, fmt.Errorf("record usage of job %s: %w", rec.JobID, err)
	}
	return p.created, nil
}

// recordBatch creates the records of batch that do not exist yet and adds
// their quantities to the counters, in one transaction that commits only if
// none of those records appeared and no counter moved meanwhile (another
// replica); else it reads again and retries. Records that exist are left
// alone, so a job is billed once however often it is recorded.
func (s *Store) recordBatch(ctx context.Context, counters counterKeys, batch []*pending) []error {
	reads := []clientv3.Op{clientv3.OpGet(counters[0]), clientv3.OpGet(counters[1])}
	for _, p := range batch {
		reads = append(reads, clientv3.OpGet(p.key, clientv3.WithCountOnly()))
	}
	errs := make([]error, len(batch))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	for {
		resp, err := s.cli.Txn(ctx).Then(reads...).Commit()
		if err != nil {
			return fail(fmt.Errorf("read usage records and counters: %w", err))
		}
		var cmps []clientv3.Cmp
		var puts []clientv3.Op
		var quantities []float64
		creating := map[string]bool{} // a job recorded twice in one batch is created once
		for i, p := range batch {
			p.created = false
			if resp.Responses[2+i].GetResponseRange().GetCount() > 0 || creating[p.key] {
				continue
			}
			creating[p.key] = true
			p.created = true
			quantities = append(quantities, p.quantity)
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(p.key), "=", 0))
			puts = append(puts, clientv3.OpPut(p.key, p.data))
		}
		if len(puts) == 0 {
			return errs
		}
		for i, c := range counters {
			var cur float64
			var rev int64
			if kvs := resp.Responses[i].GetResponseRange().GetKvs(); len(kvs) > 0 {
				rev = kvs[0].ModRevision
				cur, _ = strconv.ParseFloat(string(kvs[0].Value), 64)
			}
			// One by one, in order, as if the jobs were recorded apart.
			for _, q := range quantities {
				cur += q
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(c), "=", rev))
			puts = append(puts, clientv3.OpPut(c, strconv.FormatFloat(cur, 'f', -1, 64)))
		}
		tx, err := s.cli.Txn(ctx).If(cmps...).Then(puts...).Commit()
		if err != nil {
			return fail(fmt.Errorf("commit %d usage records: %w", len(quantities), err))
		}
		if tx.Succeeded {
			return errs
		}
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
	}
}

// Records returns the tenant's records whose job ended in [from, to).
func (s *Store) Records(ctx context.Context, tenant string, from, to time.Time) ([]Record, error) {
	var out []Record
	start, end := Prefix+tenant+"/", clientv3.GetPrefixRangeEnd(Prefix+tenant+"/")
	// Paged, so a large history does not make one huge etcd response.
	for {
		resp, err := s.cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithLimit(1000))
		if err != nil {
			return nil, fmt.Errorf("list usage of %s: %w", tenant, err)
		}
		for _, kv := range resp.Kvs {
			var r Record
			if json.Unmarshal(kv.Value, &r) != nil {
				continue
			}
			if (from.IsZero() || !r.EndTime.Before(from)) && (to.IsZero() || r.EndTime.Before(to)) {
				out = append(out, r)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	return out, nil
}

// Group is one aggregate row.
type Group struct {
	// Key is the profile name or the UTC day (2006-01-02), per group_by;
	// empty when not grouped.
	Key      string  `json:"key"`
	Jobs     int64   `json:"jobs"`
	Quantity float64 `json:"quantity"`
}

// Aggregate sums the tenant's usage in [from, to), grouped by "profile",
// "day" or nothing ("").
func (s *Store) Aggregate(ctx context.Context, tenant string, from, to time.Time, groupBy string) ([]Group, error) {
	recs, err := s.Records(ctx, tenant, from, to)
	if err != nil {
		return nil, err
	}
	sums := map[string]*Group{}
	for _, r := range recs {
		var k string
		switch groupBy {
		case "profile":
			k = r.Profile
		case "day":
			k = r.EndTime.UTC().Format(time.DateOnly)
		}
		g := sums[k]
		if g == nil {
			g = &Group{Key: k}
			sums[k] = g
		}
		g.Jobs++
		g.Quantity += r.Quantity
	}
	out := make([]Group, 0, len(sums))
	for _, g := range sums {
		out = append(out, *g)
	}
	slices.SortFunc(out, func(a, b Group) int { return cmp.Compare(a.Key, b.Key) })
	return out, nil
}
