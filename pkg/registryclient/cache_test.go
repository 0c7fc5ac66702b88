package registryclient

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
)

func putInstance(id, service string, rev int64, profiles ...string) *registryv1.Change {
	return &registryv1.Change{Type: registryv1.Change_TYPE_PUT, Kind: registryv1.ResourceKind_RESOURCE_KIND_INSTANCE, Name: id, Revision: rev,
		Resource: &registryv1.Change_Instance{Instance: &registryv1.ServiceInstance{Id: id, Service: service, Capacity: 4, Profiles: profiles}}}
}

func deleteInstance(id string, rev int64) *registryv1.Change {
	return &registryv1.Change{Type: registryv1.Change_TYPE_DELETE, Kind: registryv1.ResourceKind_RESOURCE_KIND_INSTANCE, Name: id, Revision: rev}
}

func ids(t *testing.T, c *Cache, profile string) []string {
	t.Helper()
	list, err := c.Instances(profile)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, in := range list {
		out = append(out, in.GetId())
	}
	return out
}

// The apply rules the Watch protocol relies on: a snapshot in chunks is
// served only once complete, changes move instances between profiles, and a
// later snapshot replaces everything (what vanished during a compaction is
// dropped).
func TestCacheApply(t *testing.T) {
	c := NewCache(nil)
	if _, err := c.Instances("p"); !errors.Is(err, ErrNotSynced) {
		t.Fatalf("lookup before sync: %v, want ErrNotSynced", err)
	}
	c.Apply(&registryv1.WatchResponse{Revision: 10, Resync: true, Changes: []*registryv1.Change{putInstance("a", "s", 5, "p")}})
	if _, err := c.Instances("p"); !errors.Is(err, ErrNotSynced) {
		t.Fatalf("lookup during the first snapshot: %v, want ErrNotSynced", err)
	}
	c.Apply(&registryv1.WatchResponse{Revision: 10, Synced: true, Changes: []*registryv1.Change{putInstance("b", "s", 6, "p", "q")}})
	if got := ids(t, c, "p"); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("p = %v after snapshot", got)
	}
	if c.Revision() != 10 {
		t.Fatalf("revision = %d, want 10", c.Revision())
	}

	// b stops offering p; c appears; a goes.
	c.Apply(&registryv1.WatchResponse{Revision: 13, Synced: true, Changes: []*registryv1.Change{
		putInstance("b", "s", 11, "q"), putInstance("c", "s", 12, "p"), deleteInstance("a", 13)}})
	if got := ids(t, c, "p"); !slices.Equal(got, []string{"c"}) {
		t.Errorf("p = %v, want [c]", got)
	}
	if got := ids(t, c, "q"); !slices.Equal(got, []string{"b"}) {
		t.Errorf("q = %v, want [b]", got)
	}

	// A new snapshot is staged: the old state answers until it completes.
	c.Apply(&registryv1.WatchResponse{Revision: 20, Resync: true, Changes: []*registryv1.Change{putInstance("d", "s", 19, "p")}})
	if got := ids(t, c, "p"); !slices.Equal(got, []string{"c"}) {
		t.Errorf("p during a resync = %v, want the previous state [c]", got)
	}
	c.Apply(&registryv1.WatchResponse{Revision: 20, Synced: true})
	if got := ids(t, c, "p"); !slices.Equal(got, []string{"d"}) {
		t.Errorf("p after resync = %v, want [d]", got)
	}
	if got := ids(t, c, "q"); len(got) != 0 {
		t.Errorf("q after resync = %v, want none", got)
	}
	if c.Resyncs() != 2 || c.Revision() != 20 {
		t.Errorf("resyncs = %d, revision = %d; want 2, 20", c.Resyncs(), c.Revision())
	}
}

func snapshotOf(nInstances, nProfiles int) *registryv1.WatchResponse {
	resp := &registryv1.WatchResponse{Revision: 1, Resync: true, Synced: true}
	for i := range nInstances {
		resp.Changes = append(resp.Changes, putInstance(fmt.Sprintf("inst-%04d", i), fmt.Sprintf("svc-%d", i%10), 1, fmt.Sprintf("profile-%d", i%nProfiles)))
	}
	return resp
}

// BenchmarkCacheInstances measures selection-candidate lookups (instances
// offering a profile) from a cache of 1,000 instances over 20 profiles,
// from all CPUs at once as the processor's consumers do.
func BenchmarkCacheInstances(b *testing.B) {
	c := NewCache(nil)
	c.Apply(snapshotOf(1000, 20))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			list, err := c.Instances(profileNames[i%20])
			if err != nil || len(list) != 50 {
				b.Fatalf("lookup: %d instances, %v", len(list), err)
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
}

// BenchmarkCacheInstancesUnderChurn is the same lookup while a writer
// applies heartbeat updates (one instance's load changes per response).
func BenchmarkCacheInstancesUnderChurn(b *testing.B) {
	c := NewCache(nil)
	c.Apply(snapshotOf(1000, 20))
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for rev := int64(2); ; rev++ {
			select {
			case <-stop:
				return
			default:
			}
			i := int(rev % 1000)
			c.Apply(&registryv1.WatchResponse{Revision: rev, Synced: true, Changes: []*registryv1.Change{
				putInstance(fmt.Sprintf("inst-%04d", i), fmt.Sprintf("svc-%d", i%10), rev, fmt.Sprintf("profile-%d", i%20))}})
		}
	}()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := c.Instances(profileNames[i%20]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
	close(stop)
	<-done
}

var profileNames = func() []string {
	var out []string
	for i := range 20 {
		out = append(out, fmt.Sprintf("profile-%d", i))
	}
	return out
}()
