// Package registryclient is the worker side of the service registry: it
// registers an instance on a lease and keeps the lease alive with its current
// load until the instance deregisters, re-registering when the registry lost
// it (lease expired during a partition, registry or etcd restarted), and it
// installs a worker's built-in job profiles without clobbering operator edits.
package registryclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// DefaultTTL is the lease ttl asked for when Register is given 0.
const DefaultTTL = 10 * time.Second

// Client is the part of the registry API this package uses;
// registryv1.NewRegistryServiceClient(cc) satisfies it.
type Client interface {
	RegisterInstance(ctx context.Context, in *registryv1.RegisterInstanceRequest, opts ...grpc.CallOption) (*registryv1.RegisterInstanceResponse, error)
	KeepAliveInstance(ctx context.Context, in *registryv1.KeepAliveInstanceRequest, opts ...grpc.CallOption) (*registryv1.KeepAliveInstanceResponse, error)
	DeregisterInstance(ctx context.Context, in *registryv1.DeregisterInstanceRequest, opts ...grpc.CallOption) (*registryv1.DeregisterInstanceResponse, error)
	PutJobProfile(ctx context.Context, in *registryv1.PutJobProfileRequest, opts ...grpc.CallOption) (*registryv1.JobProfile, error)
}

var _ Client = registryv1.NewRegistryServiceClient(nil)

// Option configures a Registration.
type Option func(*Registration)

// WithInFlight reports the instance's current load from f on every
// keep-alive (instead of the value given to SetInFlight).
func WithInFlight(f func() int32) Option {
	return func(r *Registration) { r.inFlightFunc = f }
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(r *Registration) { r.log = l }
}

// Registration is a registered instance and the goroutine keeping its lease
// alive. It lives until Close, independent of the context given to Register:
// a worker draining its jobs on shutdown must stay registered (or the
// processor would think it died and run its jobs again elsewhere).
type Registration struct {
	client       Client
	svc          *registryv1.Service
	inst         *registryv1.ServiceInstance
	ttl          time.Duration // requested
	log          *slog.Logger
	inFlightFunc func() int32

	inFlight   atomic.Int32
	registered atomic.Bool
	grantedTTL atomic.Int64 // nanoseconds, as last answered by the registry

	startOnce sync.Once
	startErr  error
	closeOnce sync.Once
	stop      context.CancelFunc
	done      chan struct{}
	closeErr  error
}

// New prepares a registration without contacting the registry; Start
// registers. svc and inst are copied. ttl 0 means DefaultTTL.
func New(client Client, svc *registryv1.Service, inst *registryv1.ServiceInstance, ttl time.Duration, opts ...Option) (*Registration, error) {
	switch {
	case client == nil:
		return nil, errors.New("registryclient: nil client")
	case svc == nil || svc.GetName() == "":
		return nil, errors.New("registryclient: service needs a name")
	case inst == nil || inst.GetId() == "":
		return nil, errors.New("registryclient: instance needs an id")
	case inst.GetService() != "" && inst.GetService() != svc.GetName():
		return nil, fmt.Errorf("registryclient: instance service %q differs from service %q", inst.GetService(), svc.GetName())
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	r := &Registration{
		client: client,
		svc:    proto.Clone(svc).(*registryv1.Service),
		inst:   proto.Clone(inst).(*registryv1.ServiceInstance),
		ttl:    ttl,
		log:    slog.Default(),
		done:   make(chan struct{}),
	}
	r.inst.Service = svc.GetName()
	r.inFlight.Store(inst.GetInFlight())
	r.grantedTTL.Store(int64(ttl))
	for _, o := range opts {
		o(r)
	}
	// "service" is taken by telemetry for the process's own name.
	r.log = r.log.With("instance", r.inst.GetId(), "worker_service", r.svc.GetName())
	return r, nil
}

// Register is New then Start.
func Register(ctx context.Context, client Client, svc *registryv1.Service, inst *registryv1.ServiceInstance, ttl time.Duration, opts ...Option) (*Registration, error) {
	r, err := New(client, svc, inst, ttl, opts...)
	if err != nil {
		return nil, err
	}
	if err := r.Start(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// Start registers the instance, waiting for the registry while it is
// unavailable (so services need no start-up order) until ctx ends, then
// starts the keep-alive goroutine. A permanent refusal (invalid definition,
// denied) is returned at once. Only the first call does anything; later calls
// return its result (a Registration whose Start failed is spent: make a new
// one).
func (r *Registration) Start(ctx context.Context) error {
	r.startOnce.Do(func() {
		if err := r.registerWithRetry(ctx); err != nil {
			r.startErr = fmt.Errorf("register instance %s of %s: %w", r.inst.GetId(), r.svc.GetName(), err)
			close(r.done) // nothing runs; Close becomes a no-op
			return
		}
		// The loop outlives ctx on purpose: see Registration.
		loopCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
		r.stop = stop
		go r.keepAlive(loopCtx)
	})
	return r.startErr
}

func (r *Registration) registerWithRetry(ctx context.Context) error {
	b := newBackoff(r.ttl)
	for {
		err := r.register(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		}
		if !retryable(err) {
			return err
		}
		r.log.WarnContext(ctx, "registry not reachable, retrying", "err", err)
		if !sleep(ctx, b.next()) {
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		}
	}
}

// SetInFlight records the instance's current number of running jobs, sent
// with the next keep-alive (unless WithInFlight supplies it).
func (r *Registration) SetInFlight(n int32) { r.inFlight.Store(n) }

// Registered reports whether the registry holds the instance as far as this
// client knows: false before Start, while re-registering after the lease was
// lost, and after Close. Use it in readiness checks.
func (r *Registration) Registered() bool { return r.registered.Load() }

// Instance returns a copy of the instance as registered.
func (r *Registration) Instance() *registryv1.ServiceInstance {
	return proto.Clone(r.inst).(*registryv1.ServiceInstance)
}

// Close stops the keep-alive and deregisters the instance, so the processor
// stops dispatching to it at once rather than after the lease expires.
// Close is idempotent; later calls return the first call's result.
func (r *Registration) Close(ctx context.Context) error {
	r.closeOnce.Do(func() {
		if r.stop == nil { // never started, or Start failed
			r.registered.Store(false)
			return
		}
		r.stop()
		<-r.done
		r.registered.Store(false)
		_, err := r.client.DeregisterInstance(ctx, &registryv1.DeregisterInstanceRequest{InstanceId: r.inst.GetId()})
		if err != nil && status.Code(err) != codes.NotFound {
			r.closeErr = fmt.Errorf("deregister instance %s: %w", r.inst.GetId(), err)
			return
		}
		r.log.InfoContext(ctx, "deregistered")
	})
	return r.closeErr
}

func (r *Registration) currentInFlight() int32 {
	if r.inFlightFunc != nil {
		return r.inFlightFunc()
	}
	return r.inFlight.Load()
}

func (r *Registration) interval() time.Duration {
	return time.Duration(r.grantedTTL.Load()) / 3
}

// register makes one RegisterInstance call.
func (r *Registration) register(ctx context.Context) error {
	inst := proto.Clone(r.inst).(*registryv1.ServiceInstance)
	inst.InFlight = r.currentInFlight()
	cctx, cancel := context.WithTimeout(ctx, r.ttl)
	defer cancel()
	resp, err := r.client.RegisterInstance(cctx, &registryv1.RegisterInstanceRequest{
		Service:  r.svc,
		Instance: inst,
		Ttl:      durationpb.New(r.ttl),
	})
	if err != nil {
		return err
	}
	if d := resp.GetTtl().AsDuration(); d > 0 {
		r.grantedTTL.Store(int64(d))
	}
	r.registered.Store(true)
	r.log.InfoContext(ctx, "registered", "ttl", time.Duration(r.grantedTTL.Load()))
	return nil
}

// keepAlive beats every ttl/3 until ctx ends: two beats may fail before the
// lease expires. After a failure it retries sooner, with backoff capped at
// the interval.
func (r *Registration) keepAlive(ctx context.Context) {
	defer close(r.done)
	wait := r.interval()
	var b *backoff
	for {
		if !sleep(ctx, wait) {
			return
		}
		err := r.beat(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			b = nil
			wait = r.interval()
			continue
		}
		if b == nil {
			b = newBackoff(r.interval())
		}
		wait = b.next()
		r.log.WarnContext(ctx, "registry keep-alive failed, retrying", "err", err, "retry_in", wait)
	}
}

// beat sends one keep-alive, re-registering if the registry no longer knows
// the instance.
func (r *Registration) beat(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, r.interval())
	defer cancel()
	resp, err := r.client.KeepAliveInstance(cctx, &registryv1.KeepAliveInstanceRequest{
		InstanceId: r.inst.GetId(),
		InFlight:   r.currentInFlight(),
	})
	if status.Code(err) == codes.NotFound {
		r.registered.Store(false)
		r.log.WarnContext(ctx, "registry lost the instance, registering again")
		if err := r.register(ctx); err != nil {
			return fmt.Errorf("re-register: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("keep-alive: %w", err)
	}
	if d := resp.GetTtl().AsDuration(); d > 0 {
		r.grantedTTL.Store(int64(d))
	}
	r.registered.Store(true)
	return nil
}

// EnsureProfiles creates each profile that the registry does not have yet
// (PutJobProfile with only_if_absent), leaving existing ones, possibly edited
// by an operator, as they are. Like Start it waits for an unavailable
// registry until ctx ends.
func EnsureProfiles(ctx context.Context, client Client, profiles ...*registryv1.JobProfile) error {
	for _, p := range profiles {
		if p.GetName() == "" {
			return errors.New("ensure profiles: profile needs a name")
		}
		b := newBackoff(5 * time.Second)
		for {
			_, err := client.PutJobProfile(ctx, &registryv1.PutJobProfileRequest{Profile: p, OnlyIfAbsent: true})
			if err == nil || status.Code(err) == codes.AlreadyExists {
				break
			}
			if !retryable(err) || ctx.Err() != nil {
				return fmt.Errorf("ensure profile %s: %w", p.GetName(), err)
			}
			slog.WarnContext(ctx, "registry not reachable, retrying", "profile", p.GetName(), "err", err)
			if !sleep(ctx, b.next()) {
				return fmt.Errorf("ensure profile %s: %w (last error: %w)", p.GetName(), ctx.Err(), err)
			}
		}
	}
	return nil
}

// retryable reports whether a call may succeed later unchanged.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Internal, codes.Unknown:
		return true
	}
	return false
}

// backoff doubles from 100ms up to limit, with jitter so a fleet of workers
// does not hammer a restarting registry in step.
type backoff struct {
	cur, limit time.Duration
}

func newBackoff(limit time.Duration) *backoff {
	if limit < 100*time.Millisecond {
		limit = 100 * time.Millisecond
	}
	return &backoff{cur: 100 * time.Millisecond, limit: limit}
}

func (b *backoff) next() time.Duration {
	d := b.cur
	b.cur = min(b.cur*2, b.limit)
	// 50-100% of d.
	return d/2 + rand.N(d/2+1)
}

// sleep waits d or until ctx ends; false means ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
