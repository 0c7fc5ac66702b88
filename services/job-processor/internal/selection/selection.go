// Package selection chooses the service a job is dispatched to: among the
// services with live instances offering the job's profile, the cheapest
// (cost_per_unit), then the least loaded (in-flight work over capacity of its
// instances). The choice is per service, not per instance: a service's
// instances share its work queue, and a free instance pulls the item.
package selection

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
)

// ErrNoCandidate means no live service offers the profile now. It is the one
// error a caller may count against a queue timeout; every other error of
// Select is transient (the registry could not be asked).
var ErrNoCandidate = errors.New("no candidate service")

// ErrUnknownService is what a Lookup returns for a service without a definition.
var ErrUnknownService = errors.New("unknown service")

// Lookup is what selection needs from the service registry.
type Lookup interface {
	// Instances lists the live instances offering profile.
	Instances(ctx context.Context, profile string) ([]*registryv1.ServiceInstance, error)
	// Service returns a service's definition, or ErrUnknownService.
	Service(ctx context.Context, name string) (*registryv1.Service, error)
}

// Request is what a job asks of the service it runs on.
type Request struct {
	Profile string
	// Region, when set, excludes services that name regions and not this one.
	Region string
}

// Candidate is a service the job could be dispatched to.
type Candidate struct {
	Service string
	// Cost is the service's cost_per_unit; +Inf when its definition is missing.
	Cost float64
	// Load is the in-flight work over the capacity of its live instances.
	Load float64
	// Instances counts its live instances.
	Instances int
}

// Selector chooses a service through a Lookup.
type Selector struct {
	lookup Lookup
}

// New returns a Selector asking lookup.
func New(lookup Lookup) *Selector { return &Selector{lookup: lookup} }

// Select returns the best candidate for req, ErrNoCandidate when there is
// none, or the lookup's error.
func (s *Selector) Select(ctx context.Context, req Request) (Candidate, error) {
	ranked, err := s.Candidates(ctx, req)
	if err != nil {
		return Candidate{}, err
	}
	if len(ranked) == 0 {
		return Candidate{}, ErrNoCandidate
	}
	return ranked[0], nil
}

// Candidates returns every service that can take req now, best first
// (none: an empty list), or the lookup's error.
func (s *Selector) Candidates(ctx context.Context, req Request) ([]Candidate, error) {
	instances, err := s.lookup.Instances(ctx, req.Profile)
	if err != nil {
		return nil, fmt.Errorf("list instances of profile %s: %w", req.Profile, err)
	}
	services := map[string]*registryv1.Service{}
	for _, in := range instances {
		name := in.GetService()
		if _, seen := services[name]; seen || !live(in, req.Profile) {
			continue
		}
		svc, err := s.lookup.Service(ctx, name)
		switch {
		case errors.Is(err, ErrUnknownService):
			// Live instances are proof enough that the service exists; it
			// only loses its place in the cost order.
			svc = nil
		case err != nil:
			return nil, fmt.Errorf("get service %s: %w", name, err)
		}
		services[name] = svc
	}
	return Rank(req, instances, services), nil
}

// Rank orders the services of instances that can take req, best first: by
// cost, then load, then more instances, then name (so replicas agree). A
// service is a candidate only with at least one live instance; services maps
// a service name to its definition (nil when unknown).
func Rank(req Request, instances []*registryv1.ServiceInstance, services map[string]*registryv1.Service) []Candidate {
	type acc struct {
		inFlight, capacity int64
		n                  int
	}
	byService := map[string]*acc{}
	for _, in := range instances {
		if !live(in, req.Profile) {
			continue
		}
		a := byService[in.GetService()]
		if a == nil {
			a = &acc{}
			byService[in.GetService()] = a
		}
		a.inFlight += int64(max(in.GetInFlight(), 0))
		a.capacity += int64(in.GetCapacity())
		a.n++
	}
	var out []Candidate
	for name, a := range byService {
		svc := services[name]
		if !inRegion(svc, req.Region) {
			continue
		}
		cost := math.Inf(1)
		if svc != nil {
			cost = svc.GetCostPerUnit()
		}
		out = append(out, Candidate{Service: name, Cost: cost, Load: float64(a.inFlight) / float64(a.capacity), Instances: a.n})
	}
	slices.SortFunc(out, func(a, b Candidate) int {
		return cmp.Or(
			cmp.Compare(a.Cost, b.Cost),
			cmp.Compare(a.Load, b.Load),
			cmp.Compare(b.Instances, a.Instances),
			cmp.Compare(a.Service, b.Service),
		)
	})
	return out
}

// live reports whether an instance can take work for profile: the registry
// lists only instances whose lease is alive, but one with no capacity (e.g.
// draining) takes nothing, and one that names its profiles must name this one.
func live(in *registryv1.ServiceInstance, profile string) bool {
	if in.GetService() == "" || in.GetCapacity() <= 0 {
		return false
	}
	return len(in.GetProfiles()) == 0 || slices.Contains(in.GetProfiles(), profile)
}

func inRegion(svc *registryv1.Service, region string) bool {
	return region == "" || len(svc.GetRegions()) == 0 || slices.Contains(svc.GetRegions(), region)
}
