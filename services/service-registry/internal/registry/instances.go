package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// RegisterInstance upserts the instance's service definition and puts the
// instance on a fresh lease.
func (s *Server) RegisterInstance(ctx context.Context, req *registryv1.RegisterInstanceRequest) (*registryv1.RegisterInstanceResponse, error) {
	inst, ttl, err := s.validateRegister(req)
	if err != nil {
		return nil, err
	}
	id := inst.GetId()
	if _, err := s.upsertService(ctx, req.GetService()); err != nil {
		return nil, fmt.Errorf("register instance %s: %w", id, err)
	}

	key := InstanceKey(id)
	sctx, cancel := storeCtx(ctx)
	defer cancel()
	lease, err := s.cli.Grant(sctx, int64(math.Ceil(ttl.Seconds())))
	if err != nil {
		return nil, fmt.Errorf("register instance %s: grant lease: %w", id, err)
	}
	now := s.now()
	inst.StartTime = timestamppb.New(now)
	inst.LastHeartbeatTime = timestamppb.New(now)
	val, err := encode(inst)
	if err != nil {
		return nil, fmt.Errorf("register instance %s: %w", id, err)
	}
	// The previous record comes back with the put (one round trip less per
	// registration than reading it first).
	put, err := s.cli.Put(sctx, key, val, clientv3.WithLease(lease.ID), clientv3.WithPrevKV())
	if err != nil {
		// Do not leave an orphan lease behind; it would expire anyway.
		s.revokeQuietly(ctx, lease.ID)
		return nil, fmt.Errorf("register instance %s: put: %w", id, err)
	}
	// A re-registration (a restarted worker keeping its id) moved the key to
	// the new lease; the old one guards nothing any more.
	if prev := put.PrevKv; prev != nil && prev.Lease != 0 && clientv3.LeaseID(prev.Lease) != lease.ID {
		s.revokeQuietly(ctx, clientv3.LeaseID(prev.Lease))
	}
	granted := time.Duration(lease.TTL) * time.Second
	slog.InfoContext(ctx, "instance registered", "instance", id, "instance_service", inst.GetService(), "ttl", granted, "capacity", inst.GetCapacity())
	return &registryv1.RegisterInstanceResponse{Instance: inst, Ttl: durationpb.New(granted)}, nil
}

// validateRegister checks a registration before anything is written and
// returns the instance record to store and the lease ttl.
func (s *Server) validateRegister(req *registryv1.RegisterInstanceRequest) (*registryv1.ServiceInstance, time.Duration, error) {
	if err := validateService("service", req.GetService()); err != nil {
		return nil, 0, err
	}
	svc := req.GetService()
	if req.GetInstance() == nil {
		return nil, 0, problem.InvalidArgument("instance", "instance is required")
	}
	inst := proto.CloneOf(req.GetInstance())
	if err := checkName("instance.id", inst.GetId()); err != nil {
		return nil, 0, err
	}
	switch inst.GetService() {
	case "":
		inst.Service = svc.GetName()
	case svc.GetName():
	default:
		return nil, 0, problem.InvalidArgument("instance.service", "instance.service %q differs from service.name %q", inst.GetService(), svc.GetName())
	}
	if inst.GetCapacity() == 0 {
		inst.Capacity = svc.GetDefaultCapacity()
	}
	if inst.GetCapacity() <= 0 {
		return nil, 0, problem.InvalidArgument("instance.capacity", "instance.capacity must be greater than 0 (or set service.default_capacity)")
	}
	if inst.GetInFlight() < 0 {
		return nil, 0, problem.InvalidArgument("instance.in_flight", "instance.in_flight must not be negative")
	}
	// An instance that does not say what it offers offers what its service
	// declares: ListInstances filters on the instance's own profiles.
	if len(inst.GetProfiles()) == 0 {
		inst.Profiles = slices.Clone(svc.GetProfiles())
	}
	if len(inst.GetRegions()) == 0 {
		inst.Regions = slices.Clone(svc.GetRegions())
	}
	if err := checkNames("instance.profiles", inst.GetProfiles()); err != nil {
		return nil, 0, err
	}
	if err := checkNonEmpty("instance.regions", inst.GetRegions()); err != nil {
		return nil, 0, err
	}
	ttl := s.defaultTTL
	if d := req.GetTtl(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 || d.AsDuration() > MaxTTL {
			return nil, 0, problem.InvalidArgument("ttl", "ttl must be between 0 (registry default) and %s", MaxTTL)
		}
		if d.AsDuration() > 0 {
			ttl = d.AsDuration()
		}
	}
	return inst, ttl, nil
}

// KeepAliveInstance renews the instance's lease and records its load at a
// bounded rate.
func (s *Server) KeepAliveInstance(ctx context.Context, req *registryv1.KeepAliveInstanceRequest) (*registryv1.KeepAliveInstanceResponse, error) {
	id := req.GetInstanceId()
	if err := checkName("instance_id", id); err != nil {
		return nil, err
	}
	if req.GetInFlight() < 0 {
		return nil, problem.InvalidArgument("in_flight", "in_flight must not be negative")
	}
	sctx, cancel := storeCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(sctx, InstanceKey(id))
	if err != nil {
		return nil, fmt.Errorf("keep alive instance %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].Lease == 0 {
		return nil, problem.NotFound("instance", id)
	}
	kv := resp.Kvs[0]
	leaseID := clientv3.LeaseID(kv.Lease)
	ka, err := s.cli.KeepAliveOnce(sctx, leaseID)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		// Expired between the read and the renewal: the client re-registers.
		return nil, problem.NotFound("instance", id)
	}
	if err != nil {
		return nil, fmt.Errorf("keep alive instance %s: %w", id, err)
	}
	ttl := time.Duration(ka.TTL) * time.Second

	var inst registryv1.ServiceInstance
	if err := decode(kv.Value, &inst); err != nil {
		return nil, fmt.Errorf("keep alive instance %s: %w", id, err)
	}
	now := s.now()
	since := now.Sub(inst.GetLastHeartbeatTime().AsTime())
	if since >= heartbeatWriteInterval && (inst.GetInFlight() != req.GetInFlight() || since >= ttl/3) {
		inst.InFlight = req.GetInFlight()
		inst.LastHeartbeatTime = timestamppb.New(now)
		if err := s.recordHeartbeat(sctx, kv.Key, kv.ModRevision, leaseID, &inst); err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				return nil, problem.NotFound("instance", id)
			}
			// The lease is renewed, which is what keeps the instance alive;
			// the load figure is advisory and the next heartbeat retries it.
			slog.WarnContext(ctx, "recording heartbeat failed", "instance", id, "err", err)
		}
	}
	return &registryv1.KeepAliveInstanceResponse{Ttl: durationpb.New(ttl)}, nil
}

// recordHeartbeat re-puts the instance on its lease unless the key changed
// since it was read (a concurrent re-registration wins).
func (s *Server) recordHeartbeat(ctx context.Context, key []byte, modRev int64, lease clientv3.LeaseID, inst *registryv1.ServiceInstance) error {
	val, err := encode(inst)
	if err != nil {
		return err
	}
	k := string(key)
	if _, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", modRev)).
		Then(clientv3.OpPut(k, val, clientv3.WithLease(lease))).
		Commit(); err != nil {
		return fmt.Errorf("record heartbeat %s: %w", inst.GetId(), err)
	}
	return nil
}

// DeregisterInstance revokes the instance's lease, which deletes it at once.
// Deregistering an unknown instance succeeds: the caller wants it gone, and
// it is (typically its lease expired first).
func (s *Server) DeregisterInstance(ctx context.Context, req *registryv1.DeregisterInstanceRequest) (*registryv1.DeregisterInstanceResponse, error) {
	id := req.GetInstanceId()
	if err := checkName("instance_id", id); err != nil {
		return nil, err
	}
	sctx, cancel := storeCtx(ctx)
	defer cancel()
	key := InstanceKey(id)
	resp, err := s.cli.Get(sctx, key)
	if err != nil {
		return nil, fmt.Errorf("deregister instance %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return &registryv1.DeregisterInstanceResponse{}, nil
	}
	if lease := resp.Kvs[0].Lease; lease != 0 {
		_, err = s.cli.Revoke(sctx, clientv3.LeaseID(lease))
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			err = nil
		}
	} else {
		// Never written by this registry without a lease, but do not leave
		// such a record behind either.
		_, err = s.cli.Delete(sctx, key)
	}
	if err != nil {
		return nil, fmt.Errorf("deregister instance %s: %w", id, err)
	}
	slog.InfoContext(ctx, "instance deregistered", "instance", id)
	return &registryv1.DeregisterInstanceResponse{}, nil
}

// ListInstances lists live instances, optionally of one service, offering
// one profile and/or serving one region.
func (s *Server) ListInstances(ctx context.Context, req *registryv1.ListInstancesRequest) (*registryv1.ListInstancesResponse, error) {
	items, next, err := listPage(ctx, s.cli, InstancesPrefix, req.GetPageToken(), req.GetPageSize(),
		func() *registryv1.ServiceInstance { return new(registryv1.ServiceInstance) },
		func(i *registryv1.ServiceInstance) bool {
			return (req.GetService() == "" || i.GetService() == req.GetService()) &&
				(req.GetProfile() == "" || slices.Contains(i.GetProfiles(), req.GetProfile())) &&
				(req.GetRegion() == "" || slices.Contains(i.GetRegions(), req.GetRegion()))
		})
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	return &registryv1.ListInstancesResponse{Instances: items, NextPageToken: next}, nil
}

// revokeQuietly revokes a lease on a best-effort basis (cleanup paths).
func (s *Server) revokeQuietly(ctx context.Context, id clientv3.LeaseID) {
	rctx, cancel := storeCtx(context.WithoutCancel(ctx))
	defer cancel()
	if _, err := s.cli.Revoke(rctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		slog.WarnContext(ctx, "revoking lease failed", "lease", int64(id), "err", err)
	}
}
