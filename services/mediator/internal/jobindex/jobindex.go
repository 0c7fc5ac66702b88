// Package jobindex is the job repository's listing index: one etcd key per
// job, per tenant, ordered newest first, so a page of a tenant's jobs is one
// range read that starts right after the previous page's last job, however
// many jobs are stored. Keys invert the job id (a UUIDv7, which starts with
// its creation time), so etcd's ascending key order is newest first:
//
//	/medius/jobindex/<tenant>/<inverted id>  ->  Entry (JSON: profile, tags)
//
// The entry carries the job's immutable attributes, so profile and tag
// filters need no job read; status, which changes, is checked on the record.
package jobindex

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/medius-platform/medius/services/mediator/internal/groupcommit"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Prefix of index keys.
const Prefix = "/medius/jobindex/"

// Entry is what the index knows of a job.
type Entry struct {
	ID      string            `json:"-"`
	Profile string            `json:"p,omitempty"`
	Tags    map[string]string `json:"t,omitempty"`
}

// Index reads and writes the index.
type Index struct {
	cli *clientv3.Client
	// Concurrent puts share one etcd transaction (one fsync); those keyed
	// true write only the entries not there yet (Ensure).
	puts *groupcommit.Group[bool, clientv3.Op]
}

// maxPuts is etcd's default limit of operations per transaction.
const maxPuts = 128

// New uses cli.
func New(cli *clientv3.Client) *Index {
	x := &Index{cli: cli}
	x.puts = groupcommit.New(maxPuts, 15*time.Second, x.commit)
	return x
}

func (x *Index) commit(ctx context.Context, onlyMissing bool, ops []clientv3.Op) []error {
	errs := make([]error, len(ops))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	// etcd refuses a transaction writing a key twice: a job indexed twice
	// at once is written once.
	seen := make(map[string]bool, len(ops))
	unique := ops[:0:0]
	for _, op := range ops {
		if k := string(op.KeyBytes()); !seen[k] {
			seen[k] = true
			unique = append(unique, op)
		}
	}
	if onlyMissing {
		// A read costs no fsync: write only what is missing, usually nothing.
		gets := make([]clientv3.Op, len(unique))
		for i, op := range unique {
			gets[i] = clientv3.OpGet(string(op.KeyBytes()), clientv3.WithCountOnly())
		}
		resp, err := x.cli.Txn(ctx).Then(gets...).Commit()
		if err != nil {
			return fail(err)
		}
		missing := unique[:0:0]
		for i, r := range resp.Responses {
			if r.GetResponseRange().GetCount() == 0 {
				missing = append(missing, unique[i])
			}
		}
		if unique = missing; len(unique) == 0 {
			return errs
		}
	}
	// Entries are small, but a job's tags may make one 25 KB: a batch of
	// those is written in several transactions, each within etcd's request
	// limit (1.5 MiB by default). A failed one fails its entries and those
	// after it, not those already written.
	unwritten := make(map[string]bool, len(unique))
	for _, op := range unique {
		unwritten[string(op.KeyBytes())] = true
	}
	for len(unique) > 0 {
		n, size := 0, 0
		for n < len(unique) && (n == 0 || size+opSize(unique[n]) <= maxTxnBytes) {
			size += opSize(unique[n])
			n++
		}
		if _, err := x.cli.Txn(ctx).Then(unique[:n]...).Commit(); err != nil {
			for i, op := range ops {
				if unwritten[string(op.KeyBytes())] {
					errs[i] = err
				}
			}
			return errs
		}
		for _, op := range unique[:n] {
			delete(unwritten, string(op.KeyBytes()))
		}
		unique = unique[n:]
	}
	return errs
}

// maxTxnBytes bounds the keys and values one index transaction writes,
// well within etcd's default request limit of 1.5 MiB.
const maxTxnBytes = 1 << 20

func opSize(op clientv3.Op) int { return len(op.KeyBytes()) + len(op.ValueBytes()) }

// invert maps each hex digit d of id to f-d, keeping dashes, so ordering
// inverted ids ascending orders ids descending.
func invert(id string) string {
	b := []byte(id)
	for i, c := range b {
		switch {
		case c >= '0' && c <= '9':
			b[i] = hexDigit(15 - (c - '0'))
		case c >= 'a' && c <= 'f':
			b[i] = hexDigit(15 - (c - 'a' + 10))
		}
	}
	return string(b)
}

func hexDigit(v byte) byte {
	if v < 10 {
		return '0' + v
	}
	return 'a' + v - 10
}

func tenantPrefix(tenant string) string { return Prefix + tenant + "/" }

func key(tenant, id string) string { return tenantPrefix(tenant) + invert(id) }

// Put indexes a job.
func (x *Index) Put(ctx context.Context, tenant string, e Entry) error {
	return x.put(ctx, tenant, e, false)
}

// Ensure indexes a job unless it is indexed already: the check is a read,
// so making sure of many indexed jobs costs no write.
func (x *Index) Ensure(ctx context.Context, tenant string, e Entry) error {
	return x.put(ctx, tenant, e, true)
}

func (x *Index) put(ctx context.Context, tenant string, e Entry, onlyMissing bool) error {
	data, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode index entry of job %s: %w", e.ID, err)
	}
	if err := x.puts.Do(ctx, onlyMissing, clientv3.OpPut(key(tenant, e.ID), string(data))); err != nil {
		return fmt.Errorf("index job %s: %w", e.ID, err)
	}
	return nil
}

// Delete removes a job from the index.
func (x *Index) Delete(ctx context.Context, tenant, id string) error {
	if _, err := x.cli.Delete(ctx, key(tenant, id)); err != nil {
		return fmt.Errorf("unindex job %s: %w", id, err)
	}
	return nil
}

// timeID is the smallest UUIDv7 of millisecond t: every id created at or
// after t orders at or after it.
func timeID(t time.Time) string {
	var u uuid.UUID
	ms := uint64(t.UnixMilli())
	for i := 5; i >= 0; i-- {
		u[i] = byte(ms)
		ms >>= 8
	}
	u[6] = 0x70
	u[8] = 0x80
	return u.String()
}

// Query selects a tenant's entries, newest first.
type Query struct {
	Tenant string
	// After is the last id of the previous page ("" for the first page).
	After string
	// CreatedAfter and CreatedBefore bound the creation time (zero: open).
	CreatedAfter, CreatedBefore time.Time
	// Match filters entries (nil: all).
	Match func(Entry) bool
	// Limit bounds the entries one Scan examines, selected or not (0: no
	// bound), so that a query selecting few of many entries costs a
	// bounded amount per call: past it, Scan stops with a *LimitError.
	Limit int
}

// LimitError is Scan stopped at its Query.Limit. A later Scan goes on
// from Last (Query.After).
type LimitError struct {
	// Last is the id of the last entry examined.
	Last string
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("job index scan stopped at its limit, after job %s", e.Last)
}

// Scan calls fn with each entry the query selects, newest first, reading
// etcd in batches, until fn returns false, the entries end, or Limit
// entries were examined (a *LimitError).
func (x *Index) Scan(ctx context.Context, q Query, batch int, fn func(Entry) (bool, error)) error {
	if batch <= 0 {
		batch = 500
	}
	start := tenantPrefix(q.Tenant)
	end := clientv3.GetPrefixRangeEnd(start)
	if q.After != "" {
		start = key(q.Tenant, q.After) + "\x00"
	}
	if !q.CreatedBefore.IsZero() {
		// Newest first: jobs created before T start at T's inverted id.
		if k := key(q.Tenant, timeID(q.CreatedBefore)) + "\x00"; k > start {
			start = k
		}
	}
	stop := ""
	if !q.CreatedAfter.IsZero() {
		stop = key(q.Tenant, timeID(q.CreatedAfter))
	}
	examined := 0
	for {
		if q.Limit > 0 {
			batch = min(batch, q.Limit-examined)
		}
		resp, err := x.cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithLimit(int64(batch)))
		if err != nil {
			return fmt.Errorf("read job index of %s: %w", q.Tenant, err)
		}
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			if stop != "" && k > stop {
				return nil
			}
			examined++
			var e Entry
			if json.Unmarshal(kv.Value, &e) != nil {
				continue
			}
			e.ID = invert(strings.TrimPrefix(k, tenantPrefix(q.Tenant)))
			if q.Match == nil || q.Match(e) {
				more, err := fn(e)
				if err != nil || !more {
					return err
				}
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		last := string(resp.Kvs[len(resp.Kvs)-1].Key)
		if q.Limit > 0 && examined >= q.Limit {
			return &LimitError{Last: invert(strings.TrimPrefix(last, tenantPrefix(q.Tenant)))}
		}
		start = last + "\x00"
	}
}

// PutOp is Put as an operation of a caller's transaction (bulk loads).
func PutOp(tenant string, e Entry) clientv3.Op {
	data, _ := json.Marshal(e)
	return clientv3.OpPut(key(tenant, e.ID), string(data))
}
