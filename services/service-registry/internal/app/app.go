// Package app wires the service registry: etcd, NATS, the gRPC server, the
// instance watcher and the admin endpoints, and shuts them down in order.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/medius-platform/medius/pkg/adminserver"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/etcdclient"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/pkg/telemetry"
	"github.com/medius-platform/medius/services/service-registry/internal/registry"
	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// ServiceName names this service in telemetry, NATS and health.
const ServiceName = "service-registry"

// Config is everything the registry is configured with (flags / MEDIUS_*).
type Config struct {
	// NATSURL is where instance events are published.
	NATSURL string
	// EtcdEndpoints hold the registry's state.
	EtcdEndpoints []string
	// GRPCAddr serves registryv1.RegistryService and gRPC health.
	GRPCAddr string
	// AdminAddr serves /healthz, /readyz and /metrics.
	AdminAddr string
	// LeaseTTL is the lease ttl of instances that do not ask for one.
	LeaseTTL time.Duration
	// LogLevel is debug, info, warn or error; LogFormat json or text.
	LogLevel  string
	LogFormat string
	// OTLPEndpoint receives traces (host:port); empty disables export.
	OTLPEndpoint string
	// Version is reported in telemetry.
	Version string
	// StopTimeout bounds the graceful stop of the gRPC server before
	// in-flight calls are cut off.
	StopTimeout time.Duration
}

// Defaults returns the documented defaults (docs/internals.md).
func Defaults() Config {
	return Config{
		NATSURL:       "nats://127.0.0.1:4222",
		EtcdEndpoints: []string{"http://127.0.0.1:2379"},
		GRPCAddr:      "127.0.0.1:9091",
		AdminAddr:     "127.0.0.1:9191",
		LeaseTTL:      10 * time.Second,
		LogLevel:      "info",
		LogFormat:     "json",
		StopTimeout:   10 * time.Second,
	}
}

// Validate reports the first configuration error, naming the flag.
func (c Config) Validate() error {
	if u, err := url.Parse(c.NATSURL); err != nil || u.Host == "" {
		return fmt.Errorf("--nats-url %q: want a URL like nats://host:4222", c.NATSURL)
	}
	if len(c.EtcdEndpoints) == 0 {
		return errors.New("--etcd-endpoints: at least one endpoint is required")
	}
	for _, ep := range c.EtcdEndpoints {
		if u, err := url.Parse(ep); err != nil || u.Host == "" {
			return fmt.Errorf("--etcd-endpoints %q: want URLs like http://host:2379", ep)
		}
	}
	for flag, addr := range map[string]string{"--grpc-addr": c.GRPCAddr, "--admin-addr": c.AdminAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s %q: want host:port: %w", flag, addr, err)
		}
	}
	// etcd leases have whole-second ttls and a minimum the server enforces.
	if c.LeaseTTL < time.Second || c.LeaseTTL > registry.MaxTTL {
		return fmt.Errorf("--lease-ttl %s: want between 1s and %s", c.LeaseTTL, registry.MaxTTL)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	if f := strings.ToLower(c.LogFormat); f != "json" && f != "text" {
		return fmt.Errorf("--log-format %q: want json or text", c.LogFormat)
	}
	return nil
}

// Run serves the registry until ctx ends, then shuts down in order: /readyz
// and gRPC health report draining so balancers move away, the gRPC server
// finishes in-flight calls (cut off after StopTimeout), the watcher publishes
// what it has seen, then etcd and NATS are closed and telemetry flushed.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = Defaults().StopTimeout
	}
	tel, err := telemetry.Setup(ctx, telemetry.Config{
		ServiceName: ServiceName, Version: cfg.Version, OTLPEndpoint: cfg.OTLPEndpoint,
		LogLevel: cfg.LogLevel, LogFormat: cfg.LogFormat,
	})
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer func() {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if ferr := tel.Shutdown(fctx); ferr != nil {
			slog.WarnContext(fctx, "flushing telemetry failed", "err", ferr)
		}
	}()

	// The client does not block on connecting: the registry starts without
	// etcd and reports not-ready until etcd answers.
	// etcdclient turns on keepalive, so a lease or watch stream on a hung
	// connection is noticed.
	cli, err := etcdclient.New(cfg.EtcdEndpoints)
	if err != nil {
		return fmt.Errorf("etcd client %v: %w", cfg.EtcdEndpoints, err)
	}
	defer cli.Close()

	nc, js, err := bus.Connect(cfg.NATSURL, ServiceName)
	if err != nil {
		return err
	}
	defer nc.Close()

	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("grpc listen %s: %w", cfg.GRPCAddr, err)
	}
	grpcSrv, health := grpcx.NewServer()
	registryv1.RegisterRegistryServiceServer(grpcSrv, registry.NewServer(cli, cfg.LeaseTTL))

	watcher := registry.NewWatcher(cli, js)
	admin, err := adminserver.New(cfg.AdminAddr, tel.MetricsHandler(), map[string]adminserver.Check{
		"etcd": func(ctx context.Context) error {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if _, err := cli.Get(cctx, registry.KeyPrefix, clientv3.WithCountOnly()); err != nil {
				return fmt.Errorf("etcd: %w", err)
			}
			return nil
		},
		"watch": func(context.Context) error {
			select {
			case <-watcher.Ready():
				return nil
			default:
				return errors.New("instance watch not started")
			}
		},
		"nats": func(context.Context) error {
			if s := nc.Status(); s != nats.CONNECTED {
				return fmt.Errorf("nats %s", s)
			}
			return nil
		},
	})
	if err != nil {
		lis.Close()
		return err
	}

	// The admin server and the watcher outlive the gRPC server: /readyz keeps
	// answering 503 while draining, and deregistrations made by draining
	// clients still become DOWN events. They stop when infra is canceled.
	infraCtx, stopInfra := context.WithCancel(context.WithoutCancel(ctx))
	defer stopInfra()
	g, gctx := errgroup.WithContext(infraCtx)
	g.Go(func() error { return admin.Run(gctx) })
	g.Go(func() error {
		// Provisioning waits for NATS; the registry API does not need it, so
		// it serves meanwhile and only the events wait.
		if err := bus.Provision(gctx, js); err != nil {
			if gctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("provision nats: %w", err)
		}
		return watcher.Run(gctx)
	})
	g.Go(func() error {
		if err := grpcSrv.Serve(lis); err != nil {
			return fmt.Errorf("grpc serve %s: %w", cfg.GRPCAddr, err)
		}
		return nil
	})
	g.Go(func() error {
		select {
		case <-ctx.Done():
			slog.InfoContext(ctx, "shutting down")
		case <-gctx.Done(): // a component failed
		}
		admin.SetDraining()
		health.Shutdown()
		stopGRPC(ctx, grpcSrv, cfg.StopTimeout)
		stopInfra()
		return nil
	})
	// Serving means changes are being watched, so no registration made from
	// now on goes without its event. Until NATS is provisioned and etcd
	// answers, health stays NOT_SERVING and /readyz answers 503.
	select {
	case <-watcher.Ready():
	case <-gctx.Done():
	}
	if gctx.Err() == nil {
		health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		health.SetServingStatus(registryv1.RegistryService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
		slog.InfoContext(ctx, "service registry serving", "grpc", lis.Addr().String(), "admin", admin.Addr(),
			"etcd", cfg.EtcdEndpoints, "nats", cfg.NATSURL, "lease_ttl", cfg.LeaseTTL)
	}

	if err := g.Wait(); err != nil {
		return err
	}
	// Events are published with JetStream acks, so nothing is left buffered
	// in the NATS connection; the deferred closes run next.
	slog.InfoContext(ctx, "stopped")
	return nil
}

// graceful is the part of *grpc.Server stopGRPC needs.
type graceful interface {
	GracefulStop()
	Stop()
}

// stopGRPC stops accepting calls and waits for running ones, cutting them
// off after timeout so a stuck client cannot hold the process.
func stopGRPC(ctx context.Context, s graceful, timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.GracefulStop()
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		slog.WarnContext(ctx, "grpc graceful stop timed out; closing remaining calls", "timeout", timeout)
		s.Stop()
		<-done
	}
}
