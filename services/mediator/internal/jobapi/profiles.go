package jobapi

import (
	"context"
	"errors"
	"sync"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrProfileNotFound is returned by a Profiles for a name it does not know.
var ErrProfileNotFound = errors.New("job profile not found")

// Profiles looks job profiles up. The service registry answers in
// production (RegistryProfiles); any other error than ErrProfileNotFound means
// the lookup could not be made, and the job is refused as Unavailable.
type Profiles interface {
	GetJobProfile(ctx context.Context, name string) (*registryv1.JobProfile, error)
}

// RegistryProfiles asks the service registry over gRPC.
type RegistryProfiles struct {
	Client registryv1.RegistryServiceClient
	// Timeout bounds one lookup (default 5s), so a hung registry does not
	// hold the client's request for its whole deadline.
	Timeout time.Duration
}

// GetJobProfile implements Profiles.
func (r RegistryProfiles) GetJobProfile(ctx context.Context, name string) (*registryv1.JobProfile, error) {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p, err := r.Client.GetJobProfile(ctx, &registryv1.GetJobProfileRequest{Name: name})
	switch status.Code(err) {
	case codes.OK:
		return p, nil
	case codes.NotFound, codes.InvalidArgument:
		// InvalidArgument: the registry refuses the name itself, so no
		// profile of that name can exist.
		return nil, ErrProfileNotFound
	}
	return nil, problem.Unavailable("job profile registry unavailable", err)
}

// CachedProfiles keeps profiles found by Profiles for TTL, so a submit does
// not cost a registry round trip (and its etcd read) each time. A profile
// changed in the registry applies to new jobs within TTL; unknown names are
// not cached, so a profile just created is usable at once.
type CachedProfiles struct {
	Profiles Profiles
	TTL      time.Duration
	now      func() time.Time

	mu    sync.Mutex
	cache map[string]cachedProfile
}

type cachedProfile struct {
	p       *registryv1.JobProfile
	expires time.Time
}

// maxCachedProfiles bounds the cache; it is cleared when full.
const maxCachedProfiles = 4096

// GetJobProfile implements Profiles.
func (c *CachedProfiles) GetJobProfile(ctx context.Context, name string) (*registryv1.JobProfile, error) {
	now := time.Now()
	if c.now != nil {
		now = c.now()
	}
	c.mu.Lock()
	e, ok := c.cache[name]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.p, nil
	}
	p, err := c.Profiles.GetJobProfile(ctx, name)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cache == nil || len(c.cache) >= maxCachedProfiles {
		c.cache = map[string]cachedProfile{}
	}
	c.cache[name] = cachedProfile{p: p, expires: now.Add(c.TTL)}
	return p, nil
}
