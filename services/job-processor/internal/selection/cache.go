package selection

import (
	"context"
	"fmt"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/registryclient"
)

// CacheLookup answers from a registryclient.Cache, which the registry's
// Watch stream keeps current, so selecting a service for a job costs no
// registry round-trip. Until the cache has synced (or when the registry
// does not offer Watch), it asks Fallback.
type CacheLookup struct {
	Cache    *registryclient.Cache
	Fallback *RegistryLookup
}

func (l CacheLookup) synced() bool {
	select {
	case <-l.Cache.Synced():
		return true
	default:
		return false
	}
}

// Instances lists the live instances offering profile.
func (l CacheLookup) Instances(ctx context.Context, profile string) ([]*registryv1.ServiceInstance, error) {
	if !l.synced() {
		return l.Fallback.Instances(ctx, profile)
	}
	list, err := l.Cache.Instances(profile)
	if err != nil {
		return nil, fmt.Errorf("registry cache: %w", err)
	}
	return list, nil
}

// Service returns a service's definition, or ErrUnknownService.
func (l CacheLookup) Service(ctx context.Context, name string) (*registryv1.Service, error) {
	if !l.synced() {
		return l.Fallback.Service(ctx, name)
	}
	svc, ok := l.Cache.Service(name)
	if !ok {
		return nil, fmt.Errorf("service %s: %w", name, ErrUnknownService)
	}
	return svc, nil
}

// Profile returns a job profile (default timeout, attempt limit).
func (l CacheLookup) Profile(ctx context.Context, name string) (*registryv1.JobProfile, error) {
	if l.synced() {
		if p, ok := l.Cache.Profile(name); ok {
			return p, nil
		}
	}
	return l.Fallback.Profile(ctx, name)
}
