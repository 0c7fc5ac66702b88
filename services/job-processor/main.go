// Command job-processor runs one execution per attempt of every Medius job:
// it selects a service for the job, dispatches the work item to it, tracks
// the worker's reports and cancels, and announces every change of the job to
// the mediator. See docs/internals.md for its flags, subjects and buckets.
package main

import (
	"errors"
	"fmt"

	"github.com/medius-platform/medius/pkg/flagenv"
	"github.com/medius-platform/medius/services/job-processor/internal/app"
	"github.com/medius-platform/medius/services/job-processor/internal/processor"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() { flagenv.Main("job-processor", parseConfig, app.Run) }

func parseConfig(args []string) (app.Config, error) {
	cfg := app.Defaults()
	cfg.Version = version
	fs := flagenv.NewFlagSet("job-processor")
	fs.StringVar(&cfg.NATSURL, "nats-url", cfg.NATSURL, "NATS server URL")
	etcd := fs.String("etcd-endpoints", "http://127.0.0.1:2379", "etcd endpoints, comma separated")
	fs.StringVar(&cfg.RegistryAddr, "registry-addr", cfg.RegistryAddr, "service-registry gRPC address")
	fs.DurationVar(&cfg.QueueTimeout, "queue-timeout", cfg.QueueTimeout, "how long a job may wait for a service offering its profile before it fails")
	fs.DurationVar(&cfg.HeartbeatTimeout, "heartbeat-timeout", cfg.HeartbeatTimeout, "how long a running job's worker may stay silent before the attempt is lost and the job retried elsewhere")
	fs.DurationVar(&cfg.RetryBackoff, "retry-backoff", cfg.RetryBackoff, "delay before retrying a lost attempt, doubling with each further loss")
	fs.DurationVar(&cfg.ScheduledDelay, "scheduled-delay", cfg.ScheduledDelay, fmt.Sprintf("how long a job dispatched at once is held back from being announced SCHEDULED, at most %s; a job that ends sooner is announced once, at its end (negative: announce at once; 0: the default)", processor.MaxScheduledDelay))
	fs.StringVar(&cfg.AdminAddr, "admin-addr", cfg.AdminAddr, "admin HTTP listen address (/healthz, /readyz, /metrics)")
	fs.StringVar(&cfg.PprofAddr, "pprof-addr", "", "serve net/http/pprof on this address (profiling; empty disables)")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "log level: debug, info, warn, error")
	fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "log format: json or text")
	fs.StringVar(&cfg.OTLPEndpoint, "otlp-endpoint", "", "OTLP gRPC endpoint (host:port) for traces; empty disables export")
	if err := flagenv.Parse(fs, args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	cfg.EtcdEndpoints = flagenv.List(*etcd)
	if len(cfg.EtcdEndpoints) == 0 {
		return cfg, errors.New("--etcd-endpoints: at least one endpoint is required")
	}
	if cfg.QueueTimeout <= 0 {
		return cfg, errors.New("--queue-timeout must be positive")
	}
	if cfg.HeartbeatTimeout <= 0 {
		return cfg, errors.New("--heartbeat-timeout must be positive")
	}
	if cfg.RetryBackoff <= 0 {
		return cfg, errors.New("--retry-backoff must be positive")
	}
	if cfg.ScheduledDelay > processor.MaxScheduledDelay {
		// A job's JobCreated is acknowledged once its SCHEDULED is out.
		return cfg, fmt.Errorf("--scheduled-delay %s: at most %s (a quarter of the ack wait of a job's JobCreated, which waits for it)", cfg.ScheduledDelay, processor.MaxScheduledDelay)
	}
	return cfg, nil
}
