// Package app wires the mediator: config, dependencies, servers, consumers,
// and the ordered shutdown.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/medius-platform/medius/pkg/adminserver"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/etcdclient"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/pkg/registryclient"
	"github.com/medius-platform/medius/pkg/telemetry"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"github.com/medius-platform/medius/services/mediator/internal/cortex"
	"github.com/medius-platform/medius/services/mediator/internal/gateway"
	"github.com/medius-platform/medius/services/mediator/internal/jobapi"
	"github.com/medius-platform/medius/services/mediator/internal/jobindex"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/medius-platform/medius/services/mediator/internal/mcma"
	"github.com/medius-platform/medius/services/mediator/internal/quota"
	"github.com/medius-platform/medius/services/mediator/internal/registryapi"
	"github.com/medius-platform/medius/services/mediator/internal/restapi"
	"github.com/medius-platform/medius/services/mediator/internal/statusconsumer"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
	"github.com/medius-platform/medius/services/mediator/internal/usage"
	"github.com/medius-platform/medius/services/mediator/internal/webhook"
	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/protobuf/encoding/protojson"
)

// ServiceName names the process in telemetry and NATS.
const ServiceName = "mediator"

// gatewayMaxAnswerBytes bounds an answer the REST gateway takes from the
// gRPC server (see selfConn).
const gatewayMaxAnswerBytes = 64 << 20

// Config is the mediator's configuration; main fills it from flags and
// MEDIUS_* variables.
type Config struct {
	NATSURL       string
	EtcdEndpoints []string
	// GRPCAddr serves the JobService (gRPC).
	GRPCAddr string
	// HTTPAddr serves the REST gateway under /v1.
	HTTPAddr string
	// RegistryAddr is the service registry's gRPC address.
	RegistryAddr string
	// AdminAddr serves /healthz, /readyz and /metrics.
	AdminAddr string
	// PprofAddr, when set, serves net/http/pprof (profiling; keep it on
	// loopback).
	PprofAddr string
	// BootstrapAPIKey, when set, is (re)registered for BootstrapTenant on
	// start, so a fresh install has one working credential. Only its hash is
	// stored.
	BootstrapAPIKey string
	BootstrapTenant string
	// BootstrapClientID and BootstrapClientSecret, when both set, are
	// (re)registered as an API key of BootstrapTenant, for the token
	// exchange (POST /v1/auth/token, /cortex/auth/access-token).
	BootstrapClientID     string
	BootstrapClientSecret string
	// BootstrapLocatorRoots, when set, replace BootstrapTenant's locator
	// roots on every start (file:///dir/, s3://bucket/prefix/): without
	// roots a tenant may name no file:// or s3:// locator. Unset, the
	// roots are left as an admin set them.
	BootstrapLocatorRoots []string
	// AdminAPIKey is the operator credential managing tenants and keys
	// (empty: no admin access through the API).
	AdminAPIKey string
	// TokenSigningKey signs access tokens (HS256); empty: a random key kept
	// in etcd and shared by every replica.
	TokenSigningKey string
	// TokenTTL is the lifetime of access tokens (default 1h).
	TokenTTL time.Duration
	// CortexProfiles maps Dalet Media Cortex job profiles to Medius
	// profiles (nil: cortex.DefaultProfiles).
	CortexProfiles map[string]string
	// CortexS3 says the workers reach S3 (their --s3-* flags), so Cortex
	// locators may name awsS3Bucket/awsS3Key without an httpEndpoint.
	CortexS3 bool
	// AllowPrivateWebhooks lets notification endpoints name loopback and
	// private addresses (the dev stack; never on a shared deployment).
	AllowPrivateWebhooks bool
	// WebhookBaseDelay is the first retry delay of a failed notification,
	// doubling after each failure (default 1s).
	WebhookBaseDelay time.Duration

	LogLevel     string
	LogFormat    string
	OTLPEndpoint string
	Version      string

	// DrainDelay is how long readyz reports draining before the servers stop
	// taking requests, so load balancers notice first (0 in tests).
	DrainDelay time.Duration
	// StopTimeout bounds the graceful stop of each server before it is cut.
	StopTimeout time.Duration
	// Sweep tunes the re-publication of jobs left NEW.
	Sweep jobapi.SweepConfig
	// Retention tunes the deletion of old terminal jobs.
	Retention jobapi.RetentionConfig
}

// Defaults returns the documented defaults (docs/internals.md).
func Defaults() Config {
	return Config{
		NATSURL:         "nats://127.0.0.1:4222",
		EtcdEndpoints:   []string{"http://127.0.0.1:2379"},
		GRPCAddr:        "127.0.0.1:9090",
		HTTPAddr:        "127.0.0.1:8080",
		RegistryAddr:    "127.0.0.1:9091",
		AdminAddr:       "127.0.0.1:9190",
		BootstrapTenant: "default",
		TokenTTL:        time.Hour,
		LogLevel:        "info",
		LogFormat:       "json",
		StopTimeout:     10 * time.Second,
	}
}

// Run runs the mediator until ctx ends, then shuts down in order: readyz
// draining and health NOT_SERVING, HTTP then gRPC graceful stop (with a hard
// stop after StopTimeout), consumers drained, connections closed, telemetry
// flushed.
func Run(ctx context.Context, cfg Config) (err error) {
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	tel, err := telemetry.Setup(ctx, telemetry.Config{
		ServiceName: ServiceName, Version: cfg.Version, OTLPEndpoint: cfg.OTLPEndpoint,
		LogLevel: cfg.LogLevel, LogFormat: cfg.LogFormat,
	})
	if err != nil {
		return err
	}
	defer func() {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		err = errors.Join(err, tel.Shutdown(fctx))
	}()
	log := tel.Logger

	nc, js, err := bus.Connect(cfg.NATSURL, ServiceName)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := bus.Provision(ctx, js); err != nil {
		return err
	}
	kv, err := js.KeyValue(ctx, bus.BucketJobs)
	if err != nil {
		return fmt.Errorf("open bucket %s: %w", bus.BucketJobs, err)
	}

	etcd, err := etcdclient.New(cfg.EtcdEndpoints)
	if err != nil {
		return fmt.Errorf("etcd client %v: %w", cfg.EtcdEndpoints, err)
	}
	defer etcd.Close()
	keys := auth.NewEtcdKeys(etcd)
	tenantStore := tenants.New(etcd)
	if err := bootstrap(ctx, keys, tenantStore, cfg); err != nil {
		return err
	}
	signingKey := []byte(cfg.TokenSigningKey)
	if len(signingKey) == 0 {
		if signingKey, err = auth.SharedSigningKey(ctx, etcd); err != nil {
			return err
		}
	}
	tokens := auth.NewTokens(signingKey, cfg.TokenTTL)

	regConn, err := grpcx.Dial(cfg.RegistryAddr)
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	defer regConn.Close()

	store := jobstore.New(kv)
	regClient := registryv1.NewRegistryServiceClient(regConn)
	registry := registryclient.NewCache(regClient)
	jobs, err := jobapi.New(store, js, jobapi.WatchedProfiles{Cache: registry, Fallback: jobapi.RegistryProfiles{Client: regClient}})
	if err != nil {
		return err
	}
	// One Admitter for admissions, releases and reconciliation: concurrent
	// calls share etcd transactions only within one.
	admitter := quota.New(etcd)
	jobs.SetAdmission(quota.TenantAdmitter{Admitter: admitter, Tenants: tenantStore})
	jobs.SetIndex(jobindex.New(etcd))
	jobs.SetEndpointCheck(func(ep string) error { return webhook.CheckEndpoint(ep, cfg.AllowPrivateWebhooks) })
	// Workers read file:// and s3:// locators with rights every tenant
	// shares: a job's must lie under its tenant's roots.
	jobs.SetLocatorRoots(tenantStore)
	// Every status change of a job with an endpoint is signed: its tenant's
	// secret comes from a cache kept current by an etcd watch (Run below).
	webhookSecrets := tenants.NewWebhookSecrets(etcd, 0)
	notifier := webhook.New(js, webhook.Config{AllowPrivate: cfg.AllowPrivateWebhooks, BaseDelay: cfg.WebhookBaseDelay},
		webhookSecrets.Secret,
		func(j *jobsv1.Job) ([]byte, error) {
			if cortex.IsCortexJob(j) {
				return cortex.MediatorJobJSON(j)
			}
			return protojson.MarshalOptions{EmitDefaultValues: true}.Marshal(j)
		})
	usageStore := usage.New(etcd)
	authn := auth.NewAuthenticator(keys, auth.WithAdminKey(cfg.AdminAPIKey), auth.WithTokens(tokens, tenantStore))
	restAPI := &restapi.API{Authn: authn, Tokens: tokens, Tenants: tenantStore, Usage: usageStore, Watch: jobs, Version: cfg.Version}

	grpcSrv, health := grpcx.NewServer(
		grpc.ChainUnaryInterceptor(authn.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(authn.StreamServerInterceptor()),
	)
	jobsv1.RegisterJobServiceServer(grpcSrv, jobs)
	registryv1.RegisterRegistryServiceServer(grpcSrv, registryapi.New(registryv1.NewRegistryServiceClient(regConn)))
	reflection.Register(grpcSrv)
	grpcLn, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("grpc listen %s: %w", cfg.GRPCAddr, err)
	}
	defer grpcLn.Close()

	// The gateway calls our own gRPC server, so REST requests pass the same
	// interceptors (auth, error mapping, tracing) as gRPC ones. It takes
	// answers past gRPC's default 4 MiB: a batch retried with request ids
	// is answered with those jobs as they are now, outputs included, and
	// refusing the answer would tell a REST client its created jobs failed.
	selfConn, err := grpcx.Dial(grpcLn.Addr().String(), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(gatewayMaxAnswerBytes)))
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	defer selfConn.Close()
	gwCtx, stopGW := context.WithCancel(context.WithoutCancel(ctx))
	defer stopGW()
	cortexAPI := &cortex.Handler{Jobs: jobs, Authn: authn, Tokens: restAPI, Profiles: cfg.CortexProfiles, S3: cfg.CortexS3}
	rest, err := gateway.New(gwCtx, selfConn, restAPI.Mount, (&mcma.API{Registry: registryv1.NewRegistryServiceClient(selfConn)}).Mount, cortexAPI.Mount)
	if err != nil {
		return err
	}
	httpLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("http listen %s: %w", cfg.HTTPAddr, err)
	}
	defer httpLn.Close()
	httpSrv := &http.Server{
		Handler:           otelhttp.NewHandler(rest, "mediator.rest", otelhttp.WithSpanNameFormatter(restSpanName)),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}

	regHealth := healthpb.NewHealthClient(regConn)
	admin, err := adminserver.New(cfg.AdminAddr, tel.MetricsHandler(), map[string]adminserver.Check{
		"nats": func(context.Context) error {
			if st := nc.Status(); st != nats.CONNECTED {
				return fmt.Errorf("nats %s", st)
			}
			return nil
		},
		"etcd": func(ctx context.Context) error {
			_, err := etcd.Get(ctx, auth.KeyPrefix, clientv3.WithCountOnly(), clientv3.WithLimit(1))
			return err
		},
		"registry": func(ctx context.Context) error {
			resp, err := regHealth.Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				return err
			}
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				return fmt.Errorf("registry %s", resp.GetStatus())
			}
			return nil
		},
	})
	if err != nil {
		return err
	}

	// Consumers and the admin server outlive the request servers during
	// shutdown, so they run on contexts of their own.
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAdmin()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return admin.Run(adminCtx) })
	if cfg.PprofAddr != "" {
		g.Go(func() error { return adminserver.ServePprof(adminCtx, cfg.PprofAddr) })
	}
	g.Go(func() error {
		if err := grpcSrv.Serve(grpcLn); err != nil {
			return fmt.Errorf("grpc server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := httpSrv.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	consumer := statusconsumer.New(store)
	// Frees the slots of the runs the ended record shows over, never a
	// restart's after them: this may run late, or again, after a restart.
	consumer.OnTerminal(admitter.ReleaseEnded)
	consumer.OnTerminal(func(ctx context.Context, job *jobsv1.Job) error {
		_, err := usageStore.RecordJob(ctx, job)
		return err
	})
	consumer.OnChange(notifier.Enqueue)
	g.Go(func() error { return registry.Run(workCtx) })
	g.Go(func() error { return consumer.Run(workCtx, js) })
	g.Go(func() error { return webhookSecrets.Run(workCtx) })
	g.Go(func() error { return notifier.Run(workCtx) })
	g.Go(func() error { return jobs.IndexCreated(workCtx, js) })
	sweep := cfg.Sweep
	sweep.Etcd = etcd // keeps the sweep's progress across restarts
	g.Go(func() error { return jobs.Sweep(workCtx, sweep) })
	g.Go(func() error { return jobs.Retain(workCtx, cfg.Retention) })
	g.Go(func() error {
		if err := jobs.Backfill(workCtx, etcd); err != nil && workCtx.Err() == nil {
			log.WarnContext(workCtx, "job index backfill", "err", err)
		}
		return nil
	})
	g.Go(func() error {
		// Slots whose release was lost (a crash between admission and
		// storing the job) come back within minutes.
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-workCtx.Done():
				return nil
			case <-t.C:
			}
			if n, err := jobs.ReconcileQuota(workCtx, admitter, 2*time.Minute); err != nil && workCtx.Err() == nil {
				log.WarnContext(workCtx, "quota reconciliation", "err", err)
			} else if n > 0 {
				log.InfoContext(workCtx, "quota slots freed", "count", n)
			}
		}
	})
	g.Go(func() error {
		<-gctx.Done()
		shutdown(ctx, log, cfg, admin, health, httpSrv, grpcSrv)
		stopWork()
		stopAdmin()
		return nil
	})
	log.InfoContext(ctx, "mediator started", "grpc", grpcLn.Addr().String(), "http", httpLn.Addr().String(), "admin", admin.Addr())
	if err := g.Wait(); err != nil {
		return err
	}
	log.InfoContext(ctx, "mediator stopped")
	return nil
}

// shutdown stops taking requests and lets the ones in flight finish.
func shutdown(ctx context.Context, log *slog.Logger, cfg Config, admin *adminserver.Server, health interface{ Shutdown() },
	httpSrv *http.Server, grpcSrv *grpc.Server) {
	sctx := context.WithoutCancel(ctx)
	log.InfoContext(sctx, "mediator shutting down")
	admin.SetDraining()
	health.Shutdown()
	if cfg.DrainDelay > 0 {
		time.Sleep(cfg.DrainDelay)
	}
	hctx, cancel := context.WithTimeout(sctx, cfg.StopTimeout)
	defer cancel()
	if err := httpSrv.Shutdown(hctx); err != nil {
		log.WarnContext(sctx, "http shutdown cut short", "err", err)
		_ = httpSrv.Close()
	}
	stopped := make(chan struct{})
	go func() {
		grpcSrv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(cfg.StopTimeout):
		log.WarnContext(sctx, "grpc graceful stop timed out; stopping hard")
		grpcSrv.Stop()
		<-stopped
	}
}

// bootstrap makes sure the bootstrap tenant exists and its configured
// credentials work, so a fresh install has one working tenant.
func bootstrap(ctx context.Context, keys *auth.EtcdKeys, ts *tenants.Store, cfg Config) error {
	tenant := cfg.BootstrapTenant
	if tenant == "" {
		tenant = "default"
	}
	if (cfg.BootstrapClientID == "") != (cfg.BootstrapClientSecret == "") {
		return errors.New("bootstrap client id and secret must be set together")
	}
	// etcd may still be starting next to us (compose, `medius dev`): retry
	// until ctx ends rather than exit on the first refusal.
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := ts.EnsureTenant(actx, tenant)
		if err == nil && cfg.BootstrapAPIKey != "" {
			err = keys.Put(actx, auth.HashKey(cfg.BootstrapAPIKey), auth.Record{Tenant: tenant})
		}
		if err == nil && cfg.BootstrapClientID != "" {
			_, err = ts.PutKey(actx, tenant, cfg.BootstrapClientID, cfg.BootstrapClientSecret, "bootstrap")
		}
		var roots []string
		if err == nil && len(cfg.BootstrapLocatorRoots) > 0 {
			var t tenants.Tenant
			t, err = ts.SetLocatorRoots(actx, tenant, cfg.BootstrapLocatorRoots)
			roots = t.LocatorRoots
		}
		cancel()
		if err == nil {
			slog.InfoContext(ctx, "bootstrap tenant ready", "tenant", tenant, "api_key", cfg.BootstrapAPIKey != "", "client_id", cfg.BootstrapClientID,
				"locator_roots", roots)
			return nil
		}
		var pe *problem.Error
		if errors.As(err, &pe) {
			return fmt.Errorf("bootstrap: %w", err)
		}
		slog.WarnContext(ctx, "bootstrap", "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("bootstrap: %w", err)
		case <-time.After(time.Second):
		}
	}
}

// restSpanName names a REST request's span by method and API area ("POST
// /v1/jobs", "GET /cortex/jobs"): routing happens after the span starts,
// and the full path would put job ids in span names.
func restSpanName(_ string, r *http.Request) string {
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 3)
	area := "/" + parts[0]
	if len(parts) > 1 {
		// "jobs/{id}:cancel" and "jobs:batch" keep only the collection.
		coll, _, _ := strings.Cut(parts[1], ":")
		area += "/" + coll
	}
	return r.Method + " " + area
}
