// Command job-worker runs Medius job profiles (ffprobe and friends) for one
// service: it registers itself with the service registry, takes work from the
// service's NATS work queue when it has a free slot, and reports executions.
// See docs/internals.md for its flags and subjects.
package main

import (
	"fmt"

	"github.com/medius-platform/medius/pkg/flagenv"
	"github.com/medius-platform/medius/services/job-worker/internal/app"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() { flagenv.Main("job-worker", parseConfig, app.Run) }

func parseConfig(args []string) (app.Config, error) {
	cfg := app.Defaults()
	cfg.Version = version
	fs := flagenv.NewFlagSet("job-worker")
	fs.StringVar(&cfg.NATSURL, "nats-url", cfg.NATSURL, "NATS server URL")
	etcd := fs.String("etcd-endpoints", "http://127.0.0.1:2379", "etcd endpoints, comma separated (unused by the worker; accepted for a uniform environment)")
	fs.StringVar(&cfg.RegistryAddr, "registry-addr", cfg.RegistryAddr, "service registry gRPC address")
	fs.StringVar(&cfg.Service, "service", cfg.Service, "service this instance belongs to (its instances share one work queue)")
	fs.StringVar(&cfg.InstanceID, "instance-id", cfg.InstanceID, "instance id (default hostname-pid-random)")
	fs.IntVar(&cfg.Capacity, "capacity", cfg.Capacity, "jobs run at once")
	roots := fs.String("file-roots", "", "directories file:// locators may name, comma separated (none: file:// refused)")
	fs.BoolVar(&cfg.AllowPrivateURLs, "allow-private-urls", false, "let http(s) locators reach loopback, private and link-local addresses")
	fs.StringVar(&cfg.S3.Endpoint, "s3-endpoint", "", "S3-compatible store for s3:// locators (e.g. http://127.0.0.1:7070); empty with no region: s3:// refused")
	fs.StringVar(&cfg.S3.Region, "s3-region", "", "S3 region (us-east-1 when only an endpoint is given)")
	fs.StringVar(&cfg.S3.AccessKey, "s3-access-key", "", "S3 access key id")
	fs.StringVar(&cfg.S3.SecretKey, "s3-secret-key", "", "S3 secret access key (prefer MEDIUS_S3_SECRET_KEY: flags show in ps)")
	fs.StringVar(&cfg.Region, "region", "", "region this instance runs in")
	fs.StringVar(&cfg.AdminAddr, "admin-addr", cfg.AdminAddr, "admin HTTP listen address (/healthz, /readyz, /metrics)")
	fs.StringVar(&cfg.PprofAddr, "pprof-addr", "", "serve net/http/pprof on this address (profiling; empty disables)")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "log level: debug, info, warn, error")
	fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "log format: json or text")
	fs.StringVar(&cfg.OTLPEndpoint, "otlp-endpoint", "", "OTLP gRPC endpoint (host:port) for traces; empty disables export")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", cfg.HeartbeatInterval, "period of the RUNNING heartbeat update sent while a job runs")
	fs.DurationVar(&cfg.RunningDelay, "running-delay", cfg.RunningDelay, "how long a job runs before it is reported RUNNING; a job done sooner is reported once, COMPLETED or FAILED, with its start time (negative: report at once)")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "how long running jobs may finish on shutdown before they are handed back")
	if err := flagenv.Parse(fs, args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	cfg.EtcdEndpoints = flagenv.List(*etcd)
	cfg.FileRoots = flagenv.List(*roots)
	return cfg, cfg.Validate()
}
