package jobindex_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/medius-platform/medius/services/mediator/internal/jobindex"
	"github.com/medius-platform/medius/services/mediator/internal/testsupport"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// fill indexes n jobs of tenant with increasing UUIDv7 ids and returns them,
// oldest first.
func fill(tb testing.TB, cli *clientv3.Client, tenant string, n int) []string {
	tb.Helper()
	ids := make([]string, n)
	ops := []clientv3.Op{}
	x := jobindex.New(cli)
	_ = x
	base := time.Now().Add(-time.Duration(n) * time.Millisecond)
	for i := range n {
		u, _ := uuid.NewV7()
		// Spread over time so ids order like creation.
		ms := uint64(base.Add(time.Duration(i) * time.Millisecond).UnixMilli())
		for b := 5; b >= 0; b-- {
			u[b] = byte(ms)
			ms >>= 8
		}
		ids[i] = u.String()
		ops = append(ops, jobindex.PutOp(tenant, jobindex.Entry{ID: ids[i], Profile: "P"}))
		if len(ops) == 100 || i == n-1 {
			if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
				tb.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	return ids
}

// pageAll reads every entry page by page and checks order, gaps, repeats.
func pageAll(tb testing.TB, x *jobindex.Index, tenant string, ids []string, page int) {
	tb.Helper()
	after, got := "", 0
	for {
		n := 0
		err := x.Scan(context.Background(), jobindex.Query{Tenant: tenant, After: after}, page, func(e jobindex.Entry) (bool, error) {
			want := ids[len(ids)-1-got]
			if e.ID != want {
				return false, fmt.Errorf("entry %d is %s, want %s", got, e.ID, want)
			}
			got++
			n++
			after = e.ID
			return n < page, nil
		})
		if err != nil {
			tb.Fatal(err)
		}
		if n < page {
			break
		}
	}
	if got != len(ids) {
		tb.Fatalf("paged %d entries, want %d", got, len(ids))
	}
}

func TestScan(t *testing.T) {
	env := testsupport.Start(t)
	x := jobindex.New(env.EtcdCli)
	ids := fill(t, env.EtcdCli, "acme", 1200)
	fill(t, env.EtcdCli, "acmeco", 10) // a tenant whose name extends acme's
	pageAll(t, x, "acme", ids, 100)

	// Created range: the 100 newest.
	from := time.UnixMilli(mustTime(t, ids[1100]).UnixMilli())
	n := 0
	if err := x.Scan(context.Background(), jobindex.Query{Tenant: "acme", CreatedAfter: from}, 50, func(jobindex.Entry) (bool, error) { n++; return true, nil }); err != nil {
		t.Fatal(err)
	}
	if n != 100 {
		t.Fatalf("created after: %d, want 100", n)
	}
	n = 0
	if err := x.Scan(context.Background(), jobindex.Query{Tenant: "acme", CreatedBefore: from}, 50, func(jobindex.Entry) (bool, error) { n++; return true, nil }); err != nil {
		t.Fatal(err)
	}
	if n != 1100 {
		t.Fatalf("created before: %d, want 1100", n)
	}
}

func mustTime(t *testing.T, id string) time.Time {
	u := uuid.MustParse(id)
	sec, nsec := u.Time().UnixTime()
	return time.Unix(sec, nsec)
}

// BenchmarkPage100k pages through 100,000 indexed jobs, 1,000 a page, as
// ListJobs does: b.N full listings.
func BenchmarkPage100k(b *testing.B) {
	env := testsupport.Start(b)
	x := jobindex.New(env.EtcdCli)
	ids := fill(b, env.EtcdCli, "acme", 100_000)
	b.ResetTimer()
	for b.Loop() {
		pageAll(b, x, "acme", ids, 1000)
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N)/100, "ms/page")
}

// Concurrent puts, some of the same job at once (its creation and the
// JobCreated consumer), all land, each job once.
func TestConcurrentPuts(t *testing.T) {
	env := testsupport.Start(t)
	x := jobindex.New(env.EtcdCli)
	ids := make([]string, 300)
	for i := range ids {
		u, _ := uuid.NewV7()
		ids[i] = u.String()
	}
	var wg sync.WaitGroup
	for i := range 600 {
		wg.Go(func() {
			if err := x.Put(context.Background(), "acme", jobindex.Entry{ID: ids[i%300], Profile: "P"}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got := map[string]int{}
	err := x.Scan(context.Background(), jobindex.Query{Tenant: "acme"}, 100, func(e jobindex.Entry) (bool, error) {
		got[e.ID]++
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ids) {
		t.Fatalf("%d jobs indexed, want %d", len(got), len(ids))
	}
}

// Jobs with the most tags CreateJob allows (64 of 128 + 256 bytes, 25 KB
// an entry) indexed at once are all written, though together they are over
// etcd's request limit.
func TestConcurrentPutsOfLargeEntries(t *testing.T) {
	env := testsupport.Start(t)
	x := jobindex.New(env.EtcdCli)
	tags := map[string]string{}
	for i := range 64 {
		tags[fmt.Sprintf("%0128d", i)] = strings.Repeat("v", 256)
	}
	var wg sync.WaitGroup
	for range 150 {
		wg.Go(func() {
			u, _ := uuid.NewV7()
			if err := x.Put(context.Background(), "acme", jobindex.Entry{ID: u.String(), Profile: "P", Tags: tags}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	n := 0
	if err := x.Scan(context.Background(), jobindex.Query{Tenant: "acme"}, 100, func(jobindex.Entry) (bool, error) {
		n++
		return true, nil
	}); err != nil || n != 150 {
		t.Fatalf("%d jobs indexed (%v), want 150", n, err)
	}
}

// An index write that fails in a group split over several transactions
// (here: one entry larger than etcd takes) fails only the entries not
// written: a Put that fails left its job unlisted, one that succeeds listed
// it.
func TestSplitWriteFailsOnlyWhatItDidNotWrite(t *testing.T) {
	env := testsupport.Start(t)
	x := jobindex.New(env.EtcdCli)
	huge := map[string]string{"x": strings.Repeat("v", 2<<20)}
	for round := range 10 {
		tenant := fmt.Sprintf("t%d", round)
		ids := make([]string, 31)
		errs := make([]error, len(ids))
		var wg sync.WaitGroup
		for i := range ids {
			u, _ := uuid.NewV7()
			ids[i] = u.String()
			e := jobindex.Entry{ID: ids[i], Profile: "P", Tags: map[string]string{"k": strings.Repeat("v", 30<<10)}}
			if i == len(ids)/2 {
				e.Tags = huge
			}
			wg.Go(func() { errs[i] = x.Put(context.Background(), tenant, e) })
		}
		wg.Wait()
		listed := map[string]bool{}
		if err := x.Scan(context.Background(), jobindex.Query{Tenant: tenant}, 100, func(e jobindex.Entry) (bool, error) {
			listed[e.ID] = true
			return true, nil
		}); err != nil {
			t.Fatal(err)
		}
		for i, id := range ids {
			if (errs[i] == nil) != listed[id] {
				t.Fatalf("round %d: Put of job %d answered %v, listed %v", round, i, errs[i], listed[id])
			}
		}
	}
}

// Ensure writes a missing entry and leaves an existing one alone (no new
// revision).
func TestEnsure(t *testing.T) {
	env := testsupport.Start(t)
	x := jobindex.New(env.EtcdCli)
	ctx := context.Background()
	u, _ := uuid.NewV7()
	id := u.String()
	if err := x.Ensure(ctx, "acme", jobindex.Entry{ID: id, Profile: "P"}); err != nil {
		t.Fatal(err)
	}
	rev := func() int64 {
		resp, err := env.EtcdCli.Get(ctx, jobindex.Prefix, clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("index holds %v (%v), want one entry", resp, err)
		}
		return resp.Kvs[0].ModRevision
	}
	first := rev()
	for range 3 {
		if err := x.Ensure(ctx, "acme", jobindex.Entry{ID: id, Profile: "P"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := rev(); got != first {
		t.Fatalf("an indexed job was written again: revision %d, was %d", got, first)
	}
}
