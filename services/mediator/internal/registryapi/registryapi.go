// Package registryapi serves the service registry's API on the mediator, so
// users and operators reach services, job profiles and live instances through
// the one public endpoint (and credentials) they already use: any
// authenticated caller may read (instances' addresses only the admin); only
// the admin credential may write. Worker registration is not proxied: workers
// talk to the registry directly on the internal network.
package registryapi

import (
	"context"
	"errors"
	"io"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Proxy implements registryv1.RegistryServiceServer by forwarding to the
// registry after checking the caller's rights.
type Proxy struct {
	registryv1.UnimplementedRegistryServiceServer
	client registryv1.RegistryServiceClient
}

// New forwards to client.
func New(client registryv1.RegistryServiceClient) *Proxy { return &Proxy{client: client} }

// canRead admits any authenticated caller: the catalogue of profiles is what
// a tenant needs to submit jobs.
func canRead(ctx context.Context) error {
	if _, ok := auth.AnyPrincipalFrom(ctx); !ok {
		return problem.Unauthenticated("missing bearer credentials")
	}
	return nil
}

// canWrite admits only the admin credential: services and profiles are
// shared by every tenant.
func canWrite(ctx context.Context) error {
	p, ok := auth.AnyPrincipalFrom(ctx)
	if !ok {
		return problem.Unauthenticated("missing bearer credentials")
	}
	if !p.Admin {
		return problem.New(codes.PermissionDenied, "admin-only", "Permission denied",
			"changing services and job profiles needs the admin credential")
	}
	return nil
}

func notProxied() error {
	return problem.New(codes.PermissionDenied, "registration-not-proxied", "Permission denied",
		"workers register with the service registry directly, not through the mediator")
}

func forward[Req, Resp any](ctx context.Context, check func(context.Context) error, call func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	if err := check(ctx); err != nil {
		var zero Resp
		return zero, err
	}
	return call(ctx, req)
}

// RegisterInstance is refused: see the package comment.
func (p *Proxy) RegisterInstance(context.Context, *registryv1.RegisterInstanceRequest) (*registryv1.RegisterInstanceResponse, error) {
	return nil, notProxied()
}

// KeepAliveInstance is refused: see the package comment.
func (p *Proxy) KeepAliveInstance(context.Context, *registryv1.KeepAliveInstanceRequest) (*registryv1.KeepAliveInstanceResponse, error) {
	return nil, notProxied()
}

// DeregisterInstance is refused: see the package comment.
func (p *Proxy) DeregisterInstance(context.Context, *registryv1.DeregisterInstanceRequest) (*registryv1.DeregisterInstanceResponse, error) {
	return nil, notProxied()
}

// ListInstances lists live instances, their addresses to the admin only.
func (p *Proxy) ListInstances(ctx context.Context, req *registryv1.ListInstancesRequest) (*registryv1.ListInstancesResponse, error) {
	resp, err := forward(ctx, canRead, p.client.ListInstances, req)
	if err == nil && !isAdmin(ctx) {
		for _, in := range resp.GetInstances() {
			hideAddress(in)
		}
	}
	return resp, err
}

// isAdmin reports whether the caller holds the admin credential.
func isAdmin(ctx context.Context) bool {
	p, ok := auth.AnyPrincipalFrom(ctx)
	return ok && p.Admin
}

// hideAddress blanks an instance's address for a tenant: it is where the
// registry and operators reach the worker's admin endpoint (health, metrics,
// profiling), the internal network's layout, which no tenant needs to use
// the platform. Capacity, load, regions and profiles stay: they tell a
// tenant what can run its jobs.
func hideAddress(in *registryv1.ServiceInstance) {
	if in != nil {
		in.Address = ""
	}
}

// GetService returns a service definition.
func (p *Proxy) GetService(ctx context.Context, req *registryv1.GetServiceRequest) (*registryv1.Service, error) {
	return forward(ctx, canRead, p.client.GetService, req)
}

// ListServices lists service definitions.
func (p *Proxy) ListServices(ctx context.Context, req *registryv1.ListServicesRequest) (*registryv1.ListServicesResponse, error) {
	return forward(ctx, canRead, p.client.ListServices, req)
}

// CreateService creates a service definition (admin).
func (p *Proxy) CreateService(ctx context.Context, req *registryv1.CreateServiceRequest) (*registryv1.Service, error) {
	return forward(ctx, canWrite, p.client.CreateService, req)
}

// UpdateService replaces a service definition (admin).
func (p *Proxy) UpdateService(ctx context.Context, req *registryv1.UpdateServiceRequest) (*registryv1.Service, error) {
	return forward(ctx, canWrite, p.client.UpdateService, req)
}

// PutService upserts a service definition (admin).
func (p *Proxy) PutService(ctx context.Context, req *registryv1.PutServiceRequest) (*registryv1.Service, error) {
	return forward(ctx, canWrite, p.client.PutService, req)
}

// DeleteService deletes a service definition (admin).
func (p *Proxy) DeleteService(ctx context.Context, req *registryv1.DeleteServiceRequest) (*registryv1.DeleteServiceResponse, error) {
	return forward(ctx, canWrite, p.client.DeleteService, req)
}

// GetJobProfile returns a job profile.
func (p *Proxy) GetJobProfile(ctx context.Context, req *registryv1.GetJobProfileRequest) (*registryv1.JobProfile, error) {
	return forward(ctx, canRead, p.client.GetJobProfile, req)
}

// ListJobProfiles lists job profiles.
func (p *Proxy) ListJobProfiles(ctx context.Context, req *registryv1.ListJobProfilesRequest) (*registryv1.ListJobProfilesResponse, error) {
	return forward(ctx, canRead, p.client.ListJobProfiles, req)
}

// CreateJobProfile creates a job profile (admin).
func (p *Proxy) CreateJobProfile(ctx context.Context, req *registryv1.CreateJobProfileRequest) (*registryv1.JobProfile, error) {
	return forward(ctx, canWrite, p.client.CreateJobProfile, req)
}

// UpdateJobProfile replaces a job profile (admin).
func (p *Proxy) UpdateJobProfile(ctx context.Context, req *registryv1.UpdateJobProfileRequest) (*registryv1.JobProfile, error) {
	return forward(ctx, canWrite, p.client.UpdateJobProfile, req)
}

// PutJobProfile upserts a job profile (admin).
func (p *Proxy) PutJobProfile(ctx context.Context, req *registryv1.PutJobProfileRequest) (*registryv1.JobProfile, error) {
	return forward(ctx, canWrite, p.client.PutJobProfile, req)
}

// DeleteJobProfile deletes a job profile (admin).
func (p *Proxy) DeleteJobProfile(ctx context.Context, req *registryv1.DeleteJobProfileRequest) (*registryv1.DeleteJobProfileResponse, error) {
	return forward(ctx, canWrite, p.client.DeleteJobProfile, req)
}

// Watch relays the registry's change stream (read access), instances'
// addresses to the admin only.
func (p *Proxy) Watch(req *registryv1.WatchRequest, stream grpc.ServerStreamingServer[registryv1.WatchResponse]) error {
	ctx := stream.Context()
	if err := canRead(ctx); err != nil {
		return err
	}
	admin := isAdmin(ctx)
	up, err := p.client.Watch(ctx, req)
	if err != nil {
		return err
	}
	for {
		resp, err := up.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if !admin {
			for _, c := range resp.GetChanges() {
				hideAddress(c.GetInstance())
			}
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}
