package mcma

import (
	"testing"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"google.golang.org/grpc/metadata"
)

// A tenant sees which instances can run its jobs, but not where they are:
// an instance's address is its admin endpoint on the internal network. The
// admin sees it, by listing or watching.
func TestRegistryProxyHidesInstanceAddressesFromTenants(t *testing.T) {
	t.Parallel()
	_, proxy, registry := setup(t)
	const addr = "10.0.0.5:9193"
	if _, err := registry.RegisterInstance(t.Context(), &registryv1.RegisterInstanceRequest{
		Service:  &registryv1.Service{Name: "svc", JobTypes: []string{"AIJob"}, Profiles: []string{"P"}},
		Instance: &registryv1.ServiceInstance{Id: "svc-1", Service: "svc", Address: addr, Capacity: 4, Profiles: []string{"P"}},
	}); err != nil {
		t.Fatal(err)
	}
	as := func(key string) metadata.MD { return metadata.Pairs("authorization", "Bearer "+key) }
	for _, c := range []struct {
		who  string
		key  string
		want string
	}{{"tenant", tenantKey, ""}, {"admin", adminKey, addr}} {
		ctx := metadata.NewOutgoingContext(t.Context(), as(c.key))
		list, err := proxy.ListInstances(ctx, &registryv1.ListInstancesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.GetInstances()) != 1 || list.GetInstances()[0].GetId() != "svc-1" || list.GetInstances()[0].GetCapacity() != 4 {
			t.Fatalf("%s lists %v, want svc-1 with its capacity", c.who, list.GetInstances())
		}
		if got := list.GetInstances()[0].GetAddress(); got != c.want {
			t.Errorf("%s lists address %q, want %q", c.who, got, c.want)
		}
		stream, err := proxy.Watch(ctx, &registryv1.WatchRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var seen *registryv1.ServiceInstance
		for seen == nil {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("%s watch: %v", c.who, err)
			}
			for _, ch := range resp.GetChanges() {
				if in := ch.GetInstance(); in.GetId() == "svc-1" {
					seen = in
				}
			}
			if resp.GetSynced() && seen == nil {
				t.Fatalf("%s watch: snapshot without svc-1", c.who)
			}
		}
		if seen.GetAddress() != c.want {
			t.Errorf("%s watches address %q, want %q", c.who, seen.GetAddress(), c.want)
		}
	}
}
