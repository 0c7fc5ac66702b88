package workersdk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/pkg/registryclient"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Instance describes the running instance to the registry.
type Instance struct {
	Service    string
	InstanceID string
	// Address is where the instance's admin endpoint answers (optional).
	Address  string
	Version  string
	Region   string
	Capacity int
	// LeaseTTL is the registration lease asked for (registry default if 0).
	LeaseTTL time.Duration
}

// Register installs the profiles' definitions (keeping operator edits),
// defines the service with the job types and profiles it offers and
// registers the instance on a lease kept alive with inFlight as its load. It
// waits for the registry while it is unavailable, until ctx ends. Close the
// returned registration after the runner has stopped: a draining instance
// must stay registered.
func Register(ctx context.Context, client registryclient.Client, in Instance, profiles []Profile, inFlight func() int32, log *slog.Logger) (*registryclient.Registration, error) {
	specs := make([]*registryv1.JobProfile, 0, len(profiles))
	names := make([]string, 0, len(profiles))
	var jobTypes []string
	for _, p := range profiles {
		specs = append(specs, p.Spec)
		names = append(names, p.Spec.GetName())
		if !slices.Contains(jobTypes, p.Spec.GetJobType()) {
			jobTypes = append(jobTypes, p.Spec.GetJobType())
		}
	}
	// Profiles first: the service definition names them.
	if err := registryclient.EnsureProfiles(ctx, client, specs...); err != nil {
		return nil, err
	}
	var regions []string
	if in.Region != "" {
		regions = []string{in.Region}
	}
	if log == nil {
		log = slog.Default()
	}
	return registryclient.Register(ctx, client,
		&registryv1.Service{Name: in.Service, JobTypes: jobTypes, Profiles: names, Regions: regions, DefaultCapacity: int32(in.Capacity)},
		&registryv1.ServiceInstance{
			Id: in.InstanceID, Service: in.Service, Address: in.Address, Version: in.Version,
			Capacity: int32(in.Capacity), Regions: regions, Profiles: names, StartTime: timestamppb.Now(),
		},
		in.LeaseTTL, registryclient.WithInFlight(inFlight), registryclient.WithLogger(log))
}

// Options configures Serve.
type Options struct {
	NATSURL      string
	RegistryAddr string
	Instance     Instance
	Profiles     []Profile
	// AckWait, DrainTimeout, HeartbeatInterval and RunningDelay: see Config.
	AckWait           time.Duration
	DrainTimeout      time.Duration
	HeartbeatInterval time.Duration
	RunningDelay      time.Duration
	Logger            *slog.Logger
}

// Serve is a whole worker in one call: it connects to NATS, provisions the
// streams, registers with the registry, runs the profiles until ctx ends,
// then drains (running jobs finish or are handed back), deregisters and
// closes the connection. Services that need more (an admin server, readiness
// tied to the registration) use Runner and Register directly.
func Serve(ctx context.Context, o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	if o.Instance.Capacity <= 0 {
		o.Instance.Capacity = 1
	}
	nc, js, err := bus.Connect(o.NATSURL, "worker "+o.Instance.InstanceID)
	if err != nil {
		return err
	}
	defer func() {
		// Drain flushes the last results before closing.
		if derr := nc.Drain(); derr != nil {
			log.Warn("drain nats", "err", derr)
		}
		for !nc.IsClosed() {
			time.Sleep(20 * time.Millisecond)
		}
	}()
	if err := bus.Provision(ctx, js); err != nil {
		return err
	}
	runner, err := New(Config{
		JS: js, NC: nc, Service: o.Instance.Service, InstanceID: o.Instance.InstanceID, Capacity: o.Instance.Capacity,
		Profiles: o.Profiles, AckWait: o.AckWait, DrainTimeout: o.DrainTimeout, HeartbeatInterval: o.HeartbeatInterval,
		RunningDelay: o.RunningDelay, Logger: log,
	})
	if err != nil {
		return err
	}
	cc, err := grpcx.Dial(o.RegistryAddr)
	if err != nil {
		return fmt.Errorf("dial registry %s: %w", o.RegistryAddr, err)
	}
	defer cc.Close()
	reg, err := Register(ctx, registryv1.NewRegistryServiceClient(cc), o.Instance, o.Profiles, runner.InFlight, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("register %s: %w", o.Instance.InstanceID, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if derr := reg.Close(dctx); derr != nil && !errors.Is(derr, context.Canceled) {
			log.Warn("deregister", "err", derr)
		}
	}()
	return runner.Run(ctx)
}
