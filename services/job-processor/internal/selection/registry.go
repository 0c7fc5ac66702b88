package selection

import (
	"context"
	"fmt"
	"sync"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RegistryLookup is the Lookup backed by the service registry's gRPC API.
// Service definitions change rarely and are asked for on every dispatch, so
// they are cached for a short ttl; instances are always asked for fresh.
type RegistryLookup struct {
	client registryv1.RegistryServiceClient
	ttl    time.Duration
	now    func() time.Time

	mu        sync.Mutex
	services  map[string]cachedService
	profiles  map[string]cachedProfile
	instances map[string]cachedInstances
}

// InstancesTTL is how long a profile's instance list is reused: it spares
// the registry a call per dispatch under load, and is short next to the
// rate at which instances report their load.
const InstancesTTL = 250 * time.Millisecond

type cachedInstances struct {
	list    []*registryv1.ServiceInstance
	expires time.Time
}

type cachedProfile struct {
	prof    *registryv1.JobProfile
	expires time.Time
}

type cachedService struct {
	svc     *registryv1.Service // nil: the registry does not know it
	expires time.Time
}

// NewRegistryLookup returns a Lookup asking client, caching service
// definitions for ttl.
func NewRegistryLookup(client registryv1.RegistryServiceClient, ttl time.Duration) *RegistryLookup {
	return &RegistryLookup{client: client, ttl: ttl, now: time.Now, services: map[string]cachedService{}, profiles: map[string]cachedProfile{}, instances: map[string]cachedInstances{}}
}

// Instances lists every live instance offering profile, from a list at
// most InstancesTTL old. An empty list is not kept: a job waiting for a
// worker sees it as soon as it registers.
func (r *RegistryLookup) Instances(ctx context.Context, profile string) ([]*registryv1.ServiceInstance, error) {
	now := r.now()
	r.mu.Lock()
	c, ok := r.instances[profile]
	r.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.list, nil
	}
	list, err := r.listInstances(ctx, profile)
	if err != nil {
		return nil, err
	}
	if len(list) > 0 {
		r.mu.Lock()
		r.instances[profile] = cachedInstances{list: list, expires: now.Add(InstancesTTL)}
		r.mu.Unlock()
	}
	return list, nil
}

func (r *RegistryLookup) listInstances(ctx context.Context, profile string) ([]*registryv1.ServiceInstance, error) {
	var out []*registryv1.ServiceInstance
	req := &registryv1.ListInstancesRequest{Profile: profile, PageSize: 1000}
	for {
		resp, err := r.client.ListInstances(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("registry list instances: %w", err)
		}
		out = append(out, resp.GetInstances()...)
		if resp.GetNextPageToken() == "" || resp.GetNextPageToken() == req.PageToken {
			return out, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// Service returns the definition of service name, from the cache when fresh.
func (r *RegistryLookup) Service(ctx context.Context, name string) (*registryv1.Service, error) {
	now := r.now()
	r.mu.Lock()
	c, ok := r.services[name]
	r.mu.Unlock()
	if !ok || now.After(c.expires) {
		svc, err := r.client.GetService(ctx, &registryv1.GetServiceRequest{Name: name})
		switch {
		case status.Code(err) == codes.NotFound:
			svc = nil
		case err != nil:
			return nil, fmt.Errorf("registry get service %s: %w", name, err)
		}
		c = cachedService{svc: svc, expires: now.Add(r.ttl)}
		r.mu.Lock()
		r.services[name] = c
		r.mu.Unlock()
	}
	if c.svc == nil {
		return nil, fmt.Errorf("service %s: %w", name, ErrUnknownService)
	}
	return c.svc, nil
}

// Profile returns the job profile name (default timeout, attempt limit),
// from the cache when fresh.
func (r *RegistryLookup) Profile(ctx context.Context, name string) (*registryv1.JobProfile, error) {
	now := r.now()
	r.mu.Lock()
	c, ok := r.profiles[name]
	r.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.prof, nil
	}
	prof, err := r.client.GetJobProfile(ctx, &registryv1.GetJobProfileRequest{Name: name})
	if err != nil {
		return nil, fmt.Errorf("registry get profile %s: %w", name, err)
	}
	r.mu.Lock()
	r.profiles[name] = cachedProfile{prof: prof, expires: now.Add(r.ttl)}
	r.mu.Unlock()
	return prof, nil
}
