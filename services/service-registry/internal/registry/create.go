package registry

import (
	"context"
	"fmt"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// writeMode is what a write requires of the existing record.
type writeMode int

const (
	upsert     writeMode = iota // Put: create or replace
	createOnly                  // Create: AlreadyExists when present
	updateOnly                  // Update: NotFound when absent
)

func alreadyExists(kind, name string) error {
	return &problem.Error{Code: codes.AlreadyExists, Type: kind + "-exists", Title: "Already exists",
		Detail: fmt.Sprintf("%s %q already exists", kind, name)}
}

// replace writes in as the record of key under mode, keeping the stored
// create_time; times are set by the store, never taken from the client.
func replace[T interface {
	proto.Message
	GetCreateTime() *timestamppb.Timestamp
}](ctx context.Context, s *Server, key, kind, name string, in T, newT func() T, setTimes func(T, *timestamppb.Timestamp, *timestamppb.Timestamp), mode writeMode) (T, error) {
	return update(ctx, s.cli, key, newT, func(cur T, exists bool) (T, bool, error) {
		var zero T
		switch {
		case mode == createOnly && exists:
			return zero, false, alreadyExists(kind, name)
		case mode == updateOnly && !exists:
			return zero, false, problem.NotFound(kind, name)
		}
		next := proto.CloneOf(in)
		now := timestamppb.New(s.now())
		created := now
		if exists && cur.GetCreateTime() != nil {
			created = cur.GetCreateTime()
		}
		setTimes(next, created, now)
		return next, true, nil
	})
}

func setServiceTimes(s *registryv1.Service, created, updated *timestamppb.Timestamp) {
	s.CreateTime, s.UpdateTime = created, updated
}

func setProfileTimes(p *registryv1.JobProfile, created, updated *timestamppb.Timestamp) {
	p.CreateTime, p.UpdateTime = created, updated
}

func (s *Server) writeService(ctx context.Context, in *registryv1.Service, mode writeMode, op string) (*registryv1.Service, error) {
	if err := validateService("service", in); err != nil {
		return nil, err
	}
	out, err := replace(ctx, s, ServiceKey(in.GetName()), "service", in.GetName(), in, newService, setServiceTimes, mode)
	if err != nil {
		return nil, fmt.Errorf("%s service %s: %w", op, in.GetName(), err)
	}
	return out, nil
}

func (s *Server) writeProfile(ctx context.Context, in *registryv1.JobProfile, mode writeMode, op string) (*registryv1.JobProfile, error) {
	if err := validateProfile("profile", in); err != nil {
		return nil, err
	}
	out, err := replace(ctx, s, ProfileKey(in.GetName()), "profile", in.GetName(), in, newProfile, setProfileTimes, mode)
	if err != nil {
		return nil, fmt.Errorf("%s job profile %s: %w", op, in.GetName(), err)
	}
	return out, nil
}

// CreateService creates a service definition, refusing an existing name.
func (s *Server) CreateService(ctx context.Context, req *registryv1.CreateServiceRequest) (*registryv1.Service, error) {
	return s.writeService(ctx, req.GetService(), createOnly, "create")
}

// UpdateService replaces an existing service definition.
func (s *Server) UpdateService(ctx context.Context, req *registryv1.UpdateServiceRequest) (*registryv1.Service, error) {
	return s.writeService(ctx, req.GetService(), updateOnly, "update")
}

// CreateJobProfile creates a job profile, refusing an existing name.
func (s *Server) CreateJobProfile(ctx context.Context, req *registryv1.CreateJobProfileRequest) (*registryv1.JobProfile, error) {
	return s.writeProfile(ctx, req.GetProfile(), createOnly, "create")
}

// UpdateJobProfile replaces an existing job profile.
func (s *Server) UpdateJobProfile(ctx context.Context, req *registryv1.UpdateJobProfileRequest) (*registryv1.JobProfile, error) {
	return s.writeProfile(ctx, req.GetProfile(), updateOnly, "update")
}
