package selection

import (
	"errors"
	"testing"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/registryclient"
)

// Selection from the cache ranks as from the registry: cheapest service with
// a live instance for the profile; a service without a definition is still
// a candidate.
func TestCacheLookupSelects(t *testing.T) {
	c := registryclient.NewCache(nil)
	put := func(kind registryv1.ResourceKind, name string, res any) *registryv1.Change {
		ch := &registryv1.Change{Type: registryv1.Change_TYPE_PUT, Kind: kind, Name: name}
		switch r := res.(type) {
		case *registryv1.Service:
			ch.Resource = &registryv1.Change_Service{Service: r}
		case *registryv1.ServiceInstance:
			ch.Resource = &registryv1.Change_Instance{Instance: r}
		}
		return ch
	}
	c.Apply(&registryv1.WatchResponse{Revision: 5, Resync: true, Synced: true, Changes: []*registryv1.Change{
		put(registryv1.ResourceKind_RESOURCE_KIND_SERVICE, "a", svc("a", 3)),
		put(registryv1.ResourceKind_RESOURCE_KIND_SERVICE, "b", svc("b", 1)),
		put(registryv1.ResourceKind_RESOURCE_KIND_INSTANCE, "a1", inst("a1", "a", 0, 4, "P")),
		put(registryv1.ResourceKind_RESOURCE_KIND_INSTANCE, "b1", inst("b1", "b", 0, 4, "Q")),
		put(registryv1.ResourceKind_RESOURCE_KIND_INSTANCE, "c1", inst("c1", "c", 0, 4, "P")),
	}})
	s := New(CacheLookup{Cache: c})
	got, err := s.Select(t.Context(), Request{Profile: "P"})
	if err != nil || got.Service != "a" {
		t.Fatalf("select P = %+v, %v; want a (b does not offer P, c has no definition)", got, err)
	}
	if _, err := s.Select(t.Context(), Request{Profile: "R"}); !errors.Is(err, ErrNoCandidate) {
		t.Fatalf("select R: %v, want ErrNoCandidate", err)
	}
	// The instance of b starts offering P: b is cheaper.
	c.Apply(&registryv1.WatchResponse{Revision: 6, Synced: true, Changes: []*registryv1.Change{
		put(registryv1.ResourceKind_RESOURCE_KIND_INSTANCE, "b1", inst("b1", "b", 0, 4, "P", "Q"))}})
	if got, err := s.Select(t.Context(), Request{Profile: "P"}); err != nil || got.Service != "b" {
		t.Fatalf("select P after change = %+v, %v; want b", got, err)
	}
}
