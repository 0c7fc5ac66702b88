// Package app wires the job-processor: telemetry, NATS, the registry client,
// etcd, the admin server and the processor's consumers, and shuts them down
// in order.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/medius-platform/medius/pkg/adminserver"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/etcdclient"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/pkg/metrics"
	"github.com/medius-platform/medius/pkg/registryclient"
	"github.com/medius-platform/medius/pkg/telemetry"
	"github.com/medius-platform/medius/services/job-processor/internal/processor"
	"github.com/medius-platform/medius/services/job-processor/internal/selection"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// ServiceName is the process's name in telemetry and on NATS.
const ServiceName = "job-processor"

// Config is the job-processor's configuration (flags in main.go).
type Config struct {
	// NATSURL is the NATS server; the connection keeps retrying.
	NATSURL string
	// EtcdEndpoints is the etcd cluster. Readiness checks it; the timeout
	// sweeper's leader election (next) runs on it.
	EtcdEndpoints []string
	// RegistryAddr is the service-registry's gRPC address.
	RegistryAddr string
	// QueueTimeout is how long a job may wait for a service offering its
	// profile before it fails with no-service.
	QueueTimeout time.Duration
	// ServiceCacheTTL is how long a service definition (its cost) or a job
	// profile (timeout, attempts) is reused.
	ServiceCacheTTL time.Duration
	// HeartbeatTimeout is how long a running job's worker may stay silent
	// before it is taken for lost and the job retried elsewhere.
	HeartbeatTimeout time.Duration
	// RetryBackoff is the delay before the first retry of a lost attempt,
	// doubling with each further loss.
	RetryBackoff time.Duration
	// ScheduledDelay holds back the SCHEDULED of a job dispatched at once
	// (processor.Config.ScheduledDelay); negative announces at once.
	ScheduledDelay time.Duration
	// AdminAddr serves /healthz, /readyz and /metrics.
	AdminAddr string
	// PprofAddr, when set, serves net/http/pprof (profiling; keep it on
	// loopback).
	PprofAddr    string
	LogLevel     string
	LogFormat    string
	OTLPEndpoint string
	Version      string
}

// Defaults returns the documented defaults (docs/internals.md).
func Defaults() Config {
	return Config{
		NATSURL:          "nats://127.0.0.1:4222",
		EtcdEndpoints:    []string{"http://127.0.0.1:2379"},
		RegistryAddr:     "127.0.0.1:9091",
		QueueTimeout:     60 * time.Second,
		ServiceCacheTTL:  5 * time.Second,
		HeartbeatTimeout: 6 * time.Second,
		RetryBackoff:     time.Second,
		ScheduledDelay:   processor.DefaultScheduledDelay,
		AdminAddr:        "127.0.0.1:9192",
		LogLevel:         "info",
		LogFormat:        "json",
		Version:          "dev",
	}
}

// Run runs the job-processor until ctx ends, then shuts down gracefully:
// /readyz answers 503, the consumers stop taking messages and finish the ones
// in hand, then the connections close and telemetry is flushed. It returns nil
// after a shutdown asked for by ctx.
func Run(ctx context.Context, cfg Config) (err error) {
	tel, err := telemetry.Setup(ctx, telemetry.Config{
		ServiceName: ServiceName, Version: cfg.Version, OTLPEndpoint: cfg.OTLPEndpoint,
		LogLevel: cfg.LogLevel, LogFormat: cfg.LogFormat,
	})
	if err != nil {
		return err
	}
	defer func() {
		// ctx is over by now; flushing gets its own few seconds.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if ferr := tel.Shutdown(fctx); ferr != nil {
			slog.Warn("flush telemetry", "err", ferr)
		}
	}()

	nc, js, err := bus.Connect(cfg.NATSURL, ServiceName)
	if err != nil {
		return err
	}
	defer nc.Close()
	// Queue depth per service, read from the work stream on each scrape.
	if _, err := metrics.RegisterQueueDepth(js); err != nil {
		return err
	}

	cc, err := grpcx.Dial(cfg.RegistryAddr)
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	defer cc.Close()
	health := healthpb.NewHealthClient(cc)

	etcd, err := etcdclient.New(cfg.EtcdEndpoints, etcdclient.WithLogger(nopZap()))
	if err != nil {
		return fmt.Errorf("etcd %v: %w", cfg.EtcdEndpoints, err)
	}
	defer etcd.Close()

	var proc *processor.Processor // set once NATS is provisioned
	procReady := make(chan struct{})
	checks := map[string]adminserver.Check{
		"nats": func(context.Context) error {
			if !nc.IsConnected() {
				return fmt.Errorf("nats %s: %s", cfg.NATSURL, nc.Status())
			}
			return nil
		},
		"registry": func(ctx context.Context) error {
			resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				return fmt.Errorf("registry %s: %w", cfg.RegistryAddr, err)
			}
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				return fmt.Errorf("registry %s: %s", cfg.RegistryAddr, resp.GetStatus())
			}
			return nil
		},
		"etcd": func(ctx context.Context) error {
			if _, err := etcd.Get(ctx, "/medius/health", clientv3.WithSerializable(), clientv3.WithCountOnly()); err != nil {
				return fmt.Errorf("etcd: %w", err)
			}
			return nil
		},
		"consumers": func(context.Context) error {
			select {
			case <-procReady:
				if proc.Ready() {
					return nil
				}
			default:
			}
			return errors.New("not consuming")
		},
	}
	admin, err := adminserver.New(cfg.AdminAddr, tel.MetricsHandler(), checks)
	if err != nil {
		return err
	}
	slog.InfoContext(ctx, "job-processor starting", "version", cfg.Version, "admin", admin.Addr(), "nats", cfg.NATSURL,
		"registry", cfg.RegistryAddr, "queue_timeout", cfg.QueueTimeout)

	g, gctx := errgroup.WithContext(ctx)
	if cfg.PprofAddr != "" {
		g.Go(func() error { return adminserver.ServePprof(gctx, cfg.PprofAddr) })
	}
	// The admin server outlives the consumers: it answers 503 while they drain.
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAdmin()
	g.Go(func() error { return admin.Run(adminCtx) })
	g.Go(func() error {
		<-gctx.Done()
		admin.SetDraining()
		slog.InfoContext(gctx, "job-processor draining")
		return nil
	})
	g.Go(func() error {
		defer stopAdmin()
		if err := bus.Provision(gctx, js); err != nil {
			return err
		}
		// Selection reads a local copy of the registry kept current by its
		// Watch stream; the direct lookup answers until the copy is synced.
		regClient := registryv1.NewRegistryServiceClient(cc)
		cache := registryclient.NewCache(regClient)
		g.Go(func() error { return cache.Run(gctx) })
		lookup := selection.CacheLookup{Cache: cache, Fallback: selection.NewRegistryLookup(regClient, cfg.ServiceCacheTTL)}
		p, err := processor.New(gctx, processor.Config{
			JS:               js,
			NC:               nc,
			Selector:         selection.New(lookup),
			Profiles:         lookup,
			QueueTimeout:     cfg.QueueTimeout,
			HeartbeatTimeout: cfg.HeartbeatTimeout,
			RetryBackoff:     cfg.RetryBackoff,
			ScheduledDelay:   cfg.ScheduledDelay,
		})
		if err != nil {
			return err
		}
		proc = p
		close(procReady)
		return p.Run(gctx)
	})
	err = g.Wait()
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		// Shut down while still starting (e.g. NATS not there yet).
		err = nil
	}
	if err != nil {
		return err
	}
	slog.InfoContext(ctx, "job-processor stopped")
	return nil
}
