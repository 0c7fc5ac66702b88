// Package usage records, once per completed job, the verified quantity its
// worker reported (seconds of media for media profiles), and aggregates the
// records for billing. A record is created in an etcd transaction that also
// adds the quantity to the tenant's quota counters and only succeeds if the
// record does not exist yet: status events redelivered, or a job retried on
// another worker, never bill twice.
//
// etcd key: /medius/usage/<tenant>/<job id> -> Record (JSON).
package usage

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
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
	cli *clientv3.Client
}

// New uses cli.
func New(cli *clientv3.Client) *Store { return &Store{cli: cli} }

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
	k := key(rec.Tenant, rec.JobID)
	for {
		cmps, ops, err := quota.AddQuantityOps(ctx, s.cli, rec.Tenant, rec.EndTime, rec.Quantity)
		if err != nil {
			return false, err
		}
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		ops = append(ops, clientv3.OpPut(k, string(data)))
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(k, clientv3.WithCountOnly())).Commit()
		if err != nil {
			return false, fmt.Errorf("record usage of job %s: %w", rec.JobID, err)
		}
		if resp.Succeeded {
			return true, nil
		}
		if resp.Responses[0].GetResponseRange().GetCount() > 0 {
			return false, nil // recorded before
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
		// A counter moved (another job of the tenant ended): try again.
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
