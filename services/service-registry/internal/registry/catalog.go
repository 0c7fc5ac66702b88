package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/problem"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// errConflict means a compare-and-set lost a race; the caller re-reads.
var errConflict = errors.New("concurrent modification")

// update runs a read-modify-write of key with compare-and-set on its
// revision, retrying when another writer got there first. f gets the current
// record (nil when absent) and returns the record to store, or nil to leave
// the key as it is.
func update[T proto.Message](ctx context.Context, cli *clientv3.Client, key string, newT func() T, f func(cur T, exists bool) (T, bool, error)) (T, error) {
	var zero T
	for range casAttempts {
		sctx, cancel := storeCtx(ctx)
		resp, err := cli.Get(sctx, key)
		if err != nil {
			cancel()
			return zero, err
		}
		cur, exists, modRev := newT(), false, int64(0)
		if len(resp.Kvs) == 1 {
			exists, modRev = true, resp.Kvs[0].ModRevision
			if err := decode(resp.Kvs[0].Value, cur); err != nil {
				// Writing a good record is how an undecodable one gets
				// repaired; refusing would leave it broken for good.
				warnCorrupt(ctx, resp.Kvs[0].Key, err)
				cur = newT()
			}
		}
		next, write, err := f(cur, exists)
		if err != nil || !write {
			cancel()
			return next, err
		}
		val, err := encode(next)
		if err != nil {
			cancel()
			return zero, err
		}
		// ModRevision is 0 for an absent key, so this one compare covers both
		// "still absent" and "unchanged since read".
		tr, err := cli.Txn(sctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
			Then(clientv3.OpPut(key, val)).
			Commit()
		cancel()
		if err != nil {
			return zero, err
		}
		if tr.Succeeded {
			return next, nil
		}
	}
	return zero, fmt.Errorf("%s: %w after %d attempts", key, errConflict, casAttempts)
}

// upsertService merges a service definition announced by a registering
// instance into the stored one: lists are unioned (instances of one service
// may run different versions offering different profiles), scalars are taken
// when set. Nothing is written when nothing changed, so a fleet of instances
// re-registering does not churn etcd.
func (s *Server) upsertService(ctx context.Context, in *registryv1.Service) (*registryv1.Service, error) {
	out, err := update(ctx, s.cli, ServiceKey(in.GetName()), newService, func(cur *registryv1.Service, exists bool) (*registryv1.Service, bool, error) {
		next := proto.CloneOf(cur)
		next.Name = in.GetName()
		next.JobTypes = union(next.GetJobTypes(), in.GetJobTypes())
		next.Profiles = union(next.GetProfiles(), in.GetProfiles())
		next.Regions = union(next.GetRegions(), in.GetRegions())
		if in.GetCostPerUnit() != 0 {
			next.CostPerUnit = in.GetCostPerUnit()
		}
		if in.GetDefaultCapacity() != 0 {
			next.DefaultCapacity = in.GetDefaultCapacity()
		}
		if exists && proto.Equal(cur, next) {
			return cur, false, nil
		}
		now := timestamppb.New(s.now())
		if !exists {
			next.CreateTime = now
		}
		next.UpdateTime = now
		return next, true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("upsert service %s: %w", in.GetName(), err)
	}
	return out, nil
}

// union appends to a the items of b it lacks, keeping a's order.
func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, v := range b {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

func newService() *registryv1.Service    { return new(registryv1.Service) }
func newProfile() *registryv1.JobProfile { return new(registryv1.JobProfile) }

// GetService returns a service definition.
func (s *Server) GetService(ctx context.Context, req *registryv1.GetServiceRequest) (*registryv1.Service, error) {
	if err := checkName("name", req.GetName()); err != nil {
		return nil, err
	}
	var svc registryv1.Service
	if err := s.get(ctx, ServiceKey(req.GetName()), "service", req.GetName(), &svc); err != nil {
		return nil, err
	}
	return &svc, nil
}

// ListServices lists service definitions, optionally only those offering a
// profile, a job type and/or a region (a service that declares no regions
// matches no region filter: where it runs is unknown).
func (s *Server) ListServices(ctx context.Context, req *registryv1.ListServicesRequest) (*registryv1.ListServicesResponse, error) {
	items, next, err := listPage(ctx, s.cli, ServicesPrefix, req.GetPageToken(), req.GetPageSize(), newService,
		func(svc *registryv1.Service) bool {
			return (req.GetProfile() == "" || slices.Contains(svc.GetProfiles(), req.GetProfile())) &&
				(req.GetJobType() == "" || slices.Contains(svc.GetJobTypes(), req.GetJobType())) &&
				(req.GetRegion() == "" || slices.Contains(svc.GetRegions(), req.GetRegion()))
		})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	return &registryv1.ListServicesResponse{Services: items, NextPageToken: next}, nil
}

// PutService creates or replaces a service definition (an operator's
// edit: unlike registration, lists are replaced, not merged).
func (s *Server) PutService(ctx context.Context, req *registryv1.PutServiceRequest) (*registryv1.Service, error) {
	return s.writeService(ctx, req.GetService(), upsert, "put")
}

// DeleteService deletes a service definition. Its live instances stay
// registered until they deregister or expire; a registering instance
// recreates the definition.
func (s *Server) DeleteService(ctx context.Context, req *registryv1.DeleteServiceRequest) (*registryv1.DeleteServiceResponse, error) {
	if err := checkName("name", req.GetName()); err != nil {
		return nil, err
	}
	if err := s.delete(ctx, ServiceKey(req.GetName()), "service", req.GetName()); err != nil {
		return nil, err
	}
	return &registryv1.DeleteServiceResponse{}, nil
}

// GetJobProfile returns a job profile.
func (s *Server) GetJobProfile(ctx context.Context, req *registryv1.GetJobProfileRequest) (*registryv1.JobProfile, error) {
	if err := checkName("name", req.GetName()); err != nil {
		return nil, err
	}
	var p registryv1.JobProfile
	if err := s.get(ctx, ProfileKey(req.GetName()), "profile", req.GetName(), &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// profilesInRegion returns the names of the profiles offered by services of
// region. Service definitions are few (one per kind of worker), so reading
// them all per request is cheap.
func (s *Server) profilesInRegion(ctx context.Context, region string) (map[string]bool, error) {
	out := map[string]bool{}
	token := ""
	for {
		svcs, next, err := listPage(ctx, s.cli, ServicesPrefix, token, MaxPageSize, newService, func(svc *registryv1.Service) bool {
			return slices.Contains(svc.GetRegions(), region)
		})
		if err != nil {
			return nil, err
		}
		for _, svc := range svcs {
			for _, p := range svc.GetProfiles() {
				out[p] = true
			}
		}
		if next == "" {
			return out, nil
		}
		token = next
	}
}

// ListJobProfiles lists job profiles, optionally of one job type and/or
// offered in one region.
func (s *Server) ListJobProfiles(ctx context.Context, req *registryv1.ListJobProfilesRequest) (*registryv1.ListJobProfilesResponse, error) {
	var inRegion map[string]bool
	if r := req.GetRegion(); r != "" {
		var err error
		if inRegion, err = s.profilesInRegion(ctx, r); err != nil {
			return nil, fmt.Errorf("list job profiles: %w", err)
		}
	}
	items, next, err := listPage(ctx, s.cli, ProfilesPrefix, req.GetPageToken(), req.GetPageSize(), newProfile,
		func(p *registryv1.JobProfile) bool {
			return (req.GetJobType() == "" || p.GetJobType() == req.GetJobType()) &&
				(inRegion == nil || inRegion[p.GetName()])
		})
	if err != nil {
		return nil, fmt.Errorf("list job profiles: %w", err)
	}
	return &registryv1.ListJobProfilesResponse{Profiles: items, NextPageToken: next}, nil
}

// PutJobProfile creates or replaces a job profile. With only_if_absent an
// existing profile is returned untouched, in one etcd transaction, so a
// worker announcing its built-in profiles never overwrites an operator's edit
// even when both race.
func (s *Server) PutJobProfile(ctx context.Context, req *registryv1.PutJobProfileRequest) (*registryv1.JobProfile, error) {
	if err := validateProfile("profile", req.GetProfile()); err != nil {
		return nil, err
	}
	in := req.GetProfile()
	key := ProfileKey(in.GetName())
	if req.GetOnlyIfAbsent() {
		next := proto.CloneOf(in)
		now := timestamppb.New(s.now())
		next.CreateTime, next.UpdateTime = now, now
		val, err := encode(next)
		if err != nil {
			return nil, fmt.Errorf("put job profile %s: %w", in.GetName(), err)
		}
		sctx, cancel := storeCtx(ctx)
		defer cancel()
		tr, err := s.cli.Txn(sctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, val)).
			Else(clientv3.OpGet(key)).
			Commit()
		if err != nil {
			return nil, fmt.Errorf("put job profile %s: %w", in.GetName(), err)
		}
		if tr.Succeeded {
			return next, nil
		}
		kvs := tr.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) != 1 {
			return nil, fmt.Errorf("put job profile %s: existing profile vanished during transaction", in.GetName())
		}
		var cur registryv1.JobProfile
		if err := decode(kvs[0].Value, &cur); err != nil {
			return nil, fmt.Errorf("put job profile %s: %w", in.GetName(), err)
		}
		return &cur, nil
	}
	return s.writeProfile(ctx, in, upsert, "put")
}

// DeleteJobProfile deletes a job profile.
func (s *Server) DeleteJobProfile(ctx context.Context, req *registryv1.DeleteJobProfileRequest) (*registryv1.DeleteJobProfileResponse, error) {
	if err := checkName("name", req.GetName()); err != nil {
		return nil, err
	}
	if err := s.delete(ctx, ProfileKey(req.GetName()), "profile", req.GetName()); err != nil {
		return nil, err
	}
	return &registryv1.DeleteJobProfileResponse{}, nil
}

// get reads key into m; a missing key is problem.NotFound(kind, name).
func (s *Server) get(ctx context.Context, key, kind, name string, m proto.Message) error {
	sctx, cancel := storeCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(sctx, key)
	if err != nil {
		return fmt.Errorf("get %s %s: %w", kind, name, err)
	}
	if len(resp.Kvs) == 0 {
		return problem.NotFound(kind, name)
	}
	if err := decode(resp.Kvs[0].Value, m); err != nil {
		return fmt.Errorf("get %s %s: %w", kind, name, err)
	}
	return nil
}

// delete removes key; a missing key is problem.NotFound(kind, name).
func (s *Server) delete(ctx context.Context, key, kind, name string) error {
	sctx, cancel := storeCtx(ctx)
	defer cancel()
	resp, err := s.cli.Delete(sctx, key)
	if err != nil {
		return fmt.Errorf("delete %s %s: %w", kind, name, err)
	}
	if resp.Deleted == 0 {
		return problem.NotFound(kind, name)
	}
	return nil
}
