// Package app wires the job worker: telemetry, NATS, the registry
// registration, the built-in profiles and the work runner, and shuts them
// down in order.
package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/medius-platform/medius/pkg/adminserver"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/metrics"
	"github.com/medius-platform/medius/pkg/registryclient"
	"github.com/medius-platform/medius/pkg/telemetry"
	"github.com/medius-platform/medius/pkg/workersdk"
	"github.com/medius-platform/medius/services/job-worker/internal/profiles"
	"golang.org/x/sync/errgroup"
)

// Config is the worker's configuration; every field has a flag (see main.go).
type Config struct {
	NATSURL string
	// EtcdEndpoints is accepted like every service's, but the worker does
	// not use etcd: it registers through the registry's API.
	EtcdEndpoints []string
	RegistryAddr  string
	// Service is the service this instance belongs to; instances of one
	// service share its work queue.
	Service    string
	InstanceID string
	Capacity   int
	// FileRoots are the directories file:// locators may name.
	FileRoots []string
	// AllowPrivateURLs lets http(s) locators reach internal addresses.
	AllowPrivateURLs bool
	// S3 is the store of s3:// locators; unset (no endpoint, no region)
	// refuses them.
	S3        locator.S3Config
	Region    string
	AdminAddr string
	// PprofAddr, when set, serves net/http/pprof (profiling; keep it on
	// loopback).
	PprofAddr    string
	LogLevel     string
	LogFormat    string
	OTLPEndpoint string
	Version      string

	// LeaseTTL is the registration lease asked for (registry default if 0).
	LeaseTTL time.Duration
	// DrainTimeout bounds how long running jobs may finish on shutdown.
	DrainTimeout time.Duration
	// AckWait is the work consumer's ack wait.
	AckWait time.Duration
	// HeartbeatInterval is the period of heartbeat updates while a job runs.
	HeartbeatInterval time.Duration
	// RunningDelay is how long a job runs before it is reported RUNNING
	// (negative: at once); see workersdk.Config.
	RunningDelay time.Duration
}

// Defaults returns the documented defaults (docs/internals.md).
func Defaults() Config {
	return Config{
		NATSURL:       "nats://127.0.0.1:4222",
		EtcdEndpoints: []string{"http://127.0.0.1:2379"},
		RegistryAddr:  "127.0.0.1:9091",
		Service:       "medius-worker",
		InstanceID:    DefaultInstanceID(),
		Capacity:      4,
		AdminAddr:     "127.0.0.1:9193",
		LogLevel:      "info",
		LogFormat:     "json",
		Version:       "dev",
		DrainTimeout:  30 * time.Second,
		AckWait:       30 * time.Second,

		HeartbeatInterval: 2 * time.Second,
		RunningDelay:      100 * time.Millisecond,
	}
}

// DefaultInstanceID is hostname-pid-random: unique per process even when
// pids repeat across containers. Only the hostname's first label is kept, and
// anything outside [A-Za-z0-9_-] becomes '-', because the registry refuses ids
// that would not make a single NATS subject token.
func DefaultInstanceID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "worker"
	}
	host, _, _ = strings.Cut(host, ".")
	host = strings.Map(func(r rune) rune {
		if r == '_' || r == '-' || ('0' <= r && r <= '9') || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') {
			return r
		}
		return '-'
	}, host)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}

// Validate reports the first invalid setting, naming its flag.
func (c Config) Validate() error {
	switch {
	case c.NATSURL == "":
		return errors.New("--nats-url is required")
	case c.RegistryAddr == "":
		return errors.New("--registry-addr is required")
	case c.Service == "":
		return errors.New("--service is required")
	case c.InstanceID == "":
		return errors.New("--instance-id is required")
	case c.Capacity < 1:
		return fmt.Errorf("--capacity must be at least 1, got %d", c.Capacity)
	case c.AdminAddr == "":
		return errors.New("--admin-addr is required")
	}
	if c.S3.Endpoint != "" {
		if u, err := url.Parse(c.S3.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--s3-endpoint: %q is not an http(s) URL", c.S3.Endpoint)
		}
	}
	if (c.S3.AccessKey == "") != (c.S3.SecretKey == "") {
		return errors.New("--s3-access-key and --s3-secret-key go together")
	}
	for _, r := range c.FileRoots {
		if fi, err := os.Stat(r); err != nil || !fi.IsDir() {
			return fmt.Errorf("--file-roots: %q is not a directory", r)
		}
	}
	return nil
}

// Run runs the worker until ctx ends, then shuts down gracefully: readyz
// answers 503, intake stops, running jobs finish (or are handed back after
// DrainTimeout), the instance deregisters, NATS drains, telemetry flushes.
func Run(ctx context.Context, cfg Config) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	tel, err := telemetry.Setup(ctx, telemetry.Config{
		ServiceName: "job-worker", Version: cfg.Version, OTLPEndpoint: cfg.OTLPEndpoint,
		LogLevel: cfg.LogLevel, LogFormat: cfg.LogFormat,
	})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if serr := tel.Shutdown(sctx); serr != nil {
			slog.Warn("flush telemetry", "err", serr)
		}
	}()
	log := slog.Default().With("instance", cfg.InstanceID, "worker_service", cfg.Service)

	nc, js, err := bus.Connect(cfg.NATSURL, "job-worker "+cfg.InstanceID)
	if err != nil {
		return err
	}
	defer func() {
		// Drain flushes what we published (the last results) before closing.
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

	resolver := &locator.Resolver{Roots: cfg.FileRoots, AllowPrivate: cfg.AllowPrivateURLs}
	if cfg.S3.Endpoint != "" || cfg.S3.Region != "" {
		s3cfg := cfg.S3
		resolver.S3 = &s3cfg
	}
	builtin := profiles.Builtin(resolver)
	// DetectFaces is offered only where its engine runs: a worker without
	// OpenCV would take face jobs only to fail them.
	faces := profiles.DefaultFaceEngine()
	if engine, ferr := faces.Check(ctx); ferr != nil {
		log.WarnContext(ctx, "DetectFaces not offered", "err", ferr)
	} else {
		builtin = append(builtin, profiles.FacesProfile(resolver, faces))
		log.InfoContext(ctx, "DetectFaces offered", "engine", engine)
	}
	runner, err := workersdk.New(workersdk.Config{
		JS: js, NC: nc, Service: cfg.Service, InstanceID: cfg.InstanceID, Capacity: cfg.Capacity,
		Profiles: builtin, AckWait: cfg.AckWait, HeartbeatInterval: cfg.HeartbeatInterval, RunningDelay: cfg.RunningDelay, DrainTimeout: cfg.DrainTimeout, Logger: slog.Default(),
	})
	if err != nil {
		return err
	}
	if _, err := metrics.RegisterWorkerLoad(cfg.Service, cfg.Capacity, runner.InFlight); err != nil {
		return err
	}

	cc, err := grpcx.Dial(cfg.RegistryAddr)
	if err != nil {
		return err
	}
	defer cc.Close()
	registry := registryv1.NewRegistryServiceClient(cc)

	// Set once registered; read by /readyz concurrently.
	var registration atomic.Pointer[registryclient.Registration]
	admin, err := adminserver.New(cfg.AdminAddr, tel.MetricsHandler(), map[string]adminserver.Check{
		"nats": func(context.Context) error {
			if !nc.IsConnected() {
				return fmt.Errorf("nats %s", nc.Status())
			}
			return nil
		},
		"registry": func(context.Context) error {
			if reg := registration.Load(); reg == nil || !reg.Registered() {
				return errors.New("not registered")
			}
			return nil
		},
	})
	if err != nil {
		return err
	}
	// The admin server outlives ctx: /readyz must keep answering 503 while
	// jobs drain.
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	adminDone := make(chan error, 1)
	go func() { adminDone <- admin.Run(adminCtx) }()
	defer func() {
		stopAdmin()
		if aerr := <-adminDone; aerr != nil && err == nil {
			err = aerr
		}
	}()
	if cfg.PprofAddr != "" {
		pprofDone := make(chan error, 1)
		go func() { pprofDone <- adminserver.ServePprof(adminCtx, cfg.PprofAddr) }()
		defer func() {
			stopAdmin()
			if perr := <-pprofDone; perr != nil && err == nil {
				err = perr
			}
		}()
	}
	log.InfoContext(ctx, "job worker starting", "admin", admin.Addr(), "registry", cfg.RegistryAddr, "capacity", cfg.Capacity)

	reg, err := workersdk.Register(ctx, registry, workersdk.Instance{
		Service: cfg.Service, InstanceID: cfg.InstanceID, Address: admin.Addr(), Version: cfg.Version,
		Region: cfg.Region, Capacity: cfg.Capacity, LeaseTTL: cfg.LeaseTTL,
	}, builtin, runner.InFlight, slog.Default())
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	registration.Store(reg)
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if derr := reg.Close(dctx); derr != nil {
			log.Warn("deregister", "err", derr)
		}
	}()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return runner.Run(ctx) })
	g.Go(func() error {
		<-gctx.Done()
		admin.SetDraining()
		log.Info("shutting down: draining")
		return nil
	})
	err = g.Wait()
	log.Info("job worker stopped", "err", err)
	return err
}
