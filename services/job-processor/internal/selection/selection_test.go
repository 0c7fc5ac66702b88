package selection

import (
	"context"
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func inst(id, service string, inFlight, capacity int32, profiles ...string) *registryv1.ServiceInstance {
	return &registryv1.ServiceInstance{Id: id, Service: service, InFlight: inFlight, Capacity: capacity, Profiles: profiles}
}

func svc(name string, cost float64, regions ...string) *registryv1.Service {
	return &registryv1.Service{Name: name, CostPerUnit: cost, Regions: regions}
}

func TestRank(t *testing.T) {
	tests := []struct {
		name      string
		req       Request
		instances []*registryv1.ServiceInstance
		services  map[string]*registryv1.Service
		want      []string
	}{
		{
			name:      "cheapest first",
			instances: []*registryv1.ServiceInstance{inst("a1", "a", 0, 4), inst("b1", "b", 0, 4), inst("c1", "c", 0, 4)},
			services:  map[string]*registryv1.Service{"a": svc("a", 3), "b": svc("b", 1), "c": svc("c", 2)},
			want:      []string{"b", "c", "a"},
		},
		{
			name: "same cost: least loaded first, load summed over instances",
			instances: []*registryv1.ServiceInstance{
				inst("a1", "a", 4, 4), inst("a2", "a", 0, 4), // 4/8
				inst("b1", "b", 1, 4), // 1/4
				inst("c1", "c", 3, 4), // 3/4
			},
			services: map[string]*registryv1.Service{"a": svc("a", 1), "b": svc("b", 1), "c": svc("c", 1)},
			want:     []string{"b", "a", "c"},
		},
		{
			name:      "cost beats load",
			instances: []*registryv1.ServiceInstance{inst("a1", "a", 0, 4), inst("b1", "b", 4, 4)},
			services:  map[string]*registryv1.Service{"a": svc("a", 2), "b": svc("b", 1)},
			want:      []string{"b", "a"},
		},
		{
			name:      "unknown definition ranks last",
			instances: []*registryv1.ServiceInstance{inst("a1", "a", 0, 4), inst("b1", "b", 4, 4)},
			services:  map[string]*registryv1.Service{"a": nil, "b": svc("b", 100)},
			want:      []string{"b", "a"},
		},
		{
			name:      "no live instance: not a candidate",
			instances: []*registryv1.ServiceInstance{inst("a1", "a", 0, 0), inst("b1", "b", 0, 2)},
			services:  map[string]*registryv1.Service{"a": svc("a", 0), "b": svc("b", 5)},
			want:      []string{"b"},
		},
		{
			name:      "instance naming other profiles is not live for this one",
			req:       Request{Profile: "P"},
			instances: []*registryv1.ServiceInstance{inst("a1", "a", 0, 4, "Q"), inst("b1", "b", 0, 4, "P", "Q"), inst("c1", "c", 0, 4)},
			services:  map[string]*registryv1.Service{"a": svc("a", 0), "b": svc("b", 1), "c": svc("c", 2)},
			want:      []string{"b", "c"},
		},
		{
			name:      "region excludes services naming other regions",
			req:       Request{Region: "eu"},
			instances: []*registryv1.ServiceInstance{inst("a1", "a", 0, 4), inst("b1", "b", 0, 4), inst("c1", "c", 0, 4)},
			services:  map[string]*registryv1.Service{"a": svc("a", 0, "us"), "b": svc("b", 1, "eu", "us"), "c": svc("c", 2)},
			want:      []string{"b", "c"},
		},
		{
			name:      "tie: more instances, then name",
			instances: []*registryv1.ServiceInstance{inst("c1", "c", 0, 4), inst("b1", "b", 0, 4), inst("a1", "a", 0, 2), inst("a2", "a", 0, 2)},
			services:  map[string]*registryv1.Service{"a": svc("a", 1), "b": svc("b", 1), "c": svc("c", 1)},
			want:      []string{"a", "b", "c"},
		},
		{name: "none", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Rank(tt.req, tt.instances, tt.services)
			var names []string
			for _, c := range got {
				names = append(names, c.Service)
			}
			if !slices.Equal(names, tt.want) {
				t.Errorf("Rank = %v, want %v", names, tt.want)
			}
		})
	}
}

// fixedLookup answers from fixed lists.
type fixedLookup struct {
	instances []*registryv1.ServiceInstance
	services  map[string]*registryv1.Service
	err       error
}

func (f fixedLookup) Instances(context.Context, string) ([]*registryv1.ServiceInstance, error) {
	return f.instances, f.err
}

func (f fixedLookup) Service(_ context.Context, name string) (*registryv1.Service, error) {
	if s, ok := f.services[name]; ok {
		return s, nil
	}
	return nil, ErrUnknownService
}

func TestSelect(t *testing.T) {
	ctx := context.Background()
	s := New(fixedLookup{
		instances: []*registryv1.ServiceInstance{inst("a1", "a", 1, 2), inst("b1", "b", 0, 2), inst("x1", "x", 0, 2)},
		services:  map[string]*registryv1.Service{"a": svc("a", 1), "b": svc("b", 1)},
	})
	got, err := s.Select(ctx, Request{Profile: "P"})
	if err != nil || got.Service != "b" || got.Load != 0 || got.Cost != 1 || got.Instances != 1 {
		t.Errorf("Select = %+v, %v; want b", got, err)
	}

	if _, err := New(fixedLookup{}).Select(ctx, Request{Profile: "P"}); !errors.Is(err, ErrNoCandidate) {
		t.Errorf("Select with no instances: %v, want ErrNoCandidate", err)
	}
	down := errors.New("registry down")
	if _, err := New(fixedLookup{err: down}).Select(ctx, Request{Profile: "P"}); !errors.Is(err, down) || errors.Is(err, ErrNoCandidate) {
		t.Errorf("Select with the registry down: %v, want a transient error", err)
	}
	only := New(fixedLookup{instances: []*registryv1.ServiceInstance{inst("x1", "x", 0, 2)}})
	if got, err := only.Select(ctx, Request{Profile: "P"}); err != nil || got.Service != "x" || !math.IsInf(got.Cost, 1) {
		t.Errorf("Select of an undefined service = %+v, %v", got, err)
	}
}

// registryClient answers GetService and counts the calls; the rest of the
// client interface is unused here.
type registryClient struct {
	registryv1.RegistryServiceClient
	calls int
}

func (c *registryClient) GetService(_ context.Context, req *registryv1.GetServiceRequest, _ ...grpc.CallOption) (*registryv1.Service, error) {
	c.calls++
	if req.Name == "gone" {
		return nil, status.Error(codes.NotFound, "not found")
	}
	if req.Name == "down" {
		return nil, status.Error(codes.Unavailable, "unavailable")
	}
	return svc(req.Name, 1), nil
}

func (c *registryClient) ListInstances(_ context.Context, req *registryv1.ListInstancesRequest, _ ...grpc.CallOption) (*registryv1.ListInstancesResponse, error) {
	c.calls++
	if req.Profile == "none" {
		return &registryv1.ListInstancesResponse{}, nil
	}
	if req.PageToken == "" {
		return &registryv1.ListInstancesResponse{Instances: []*registryv1.ServiceInstance{inst("a1", "a", 0, 1)}, NextPageToken: "p2"}, nil
	}
	return &registryv1.ListInstancesResponse{Instances: []*registryv1.ServiceInstance{inst("a2", "a", 0, 1)}}, nil
}

func TestRegistryLookup(t *testing.T) {
	ctx := context.Background()
	c := &registryClient{}
	clock := time.Unix(0, 0)
	r := NewRegistryLookup(c, time.Second)
	r.now = func() time.Time { return clock }

	for range 3 {
		if s, err := r.Service(ctx, "a"); err != nil || s.Name != "a" {
			t.Fatalf("Service = %v, %v", s, err)
		}
	}
	if c.calls != 1 {
		t.Errorf("%d calls for a cached service, want 1", c.calls)
	}
	clock = clock.Add(2 * time.Second)
	if _, err := r.Service(ctx, "a"); err != nil || c.calls != 2 {
		t.Errorf("after the ttl: %v, %d calls, want a fresh call", err, c.calls)
	}
	if _, err := r.Service(ctx, "gone"); !errors.Is(err, ErrUnknownService) {
		t.Errorf("Service(gone) = %v, want ErrUnknownService", err)
	}
	if _, err := r.Service(ctx, "down"); err == nil || errors.Is(err, ErrUnknownService) {
		t.Errorf("Service(down) = %v, want a transient error", err)
	}

	c.calls = 0
	ins, err := r.Instances(ctx, "P")
	if err != nil || len(ins) != 2 || c.calls != 2 {
		t.Errorf("Instances = %v, %v after %d calls; want both pages", ins, err, c.calls)
	}
	// Within InstancesTTL the list is reused; past it, asked for again.
	if ins, err := r.Instances(ctx, "P"); err != nil || len(ins) != 2 || c.calls != 2 {
		t.Errorf("cached Instances = %v, %v after %d calls; want no new call", ins, err, c.calls)
	}
	clock = clock.Add(InstancesTTL)
	if _, err := r.Instances(ctx, "P"); err != nil || c.calls != 4 {
		t.Errorf("after InstancesTTL: %v, %d calls, want a fresh listing", err, c.calls)
	}
	// An empty list is never kept: a worker that registers is seen at once.
	c.calls = 0
	for range 2 {
		if ins, err := r.Instances(ctx, "none"); err != nil || len(ins) != 0 {
			t.Fatalf("Instances(none) = %v, %v", ins, err)
		}
	}
	if c.calls != 2 {
		t.Errorf("%d calls for an empty profile twice, want 2 (not cached)", c.calls)
	}
}
