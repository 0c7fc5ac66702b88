package jobapi

import (
	"context"
	"errors"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/pkg/registryclient"
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

// WatchedProfiles answers from the registry's own copy kept current by its
// Watch stream (registryclient.Cache, run by the caller): a submit costs no
// round trip, and a profile changed in the registry applies to the next job
// at once. Fallback answers until the copy is synced, and for a name the
// copy does not hold: a profile created a moment ago whose change is still
// on its way (so it is usable at once), or a wrong name (refused anyway).
type WatchedProfiles struct {
	Cache    *registryclient.Cache
	Fallback Profiles
}

// GetJobProfile implements Profiles.
func (w WatchedProfiles) GetJobProfile(ctx context.Context, name string) (*registryv1.JobProfile, error) {
	select {
	case <-w.Cache.Synced():
		if p, ok := w.Cache.Profile(name); ok {
			return p, nil
		}
	default:
	}
	return w.Fallback.GetJobProfile(ctx, name)
}
