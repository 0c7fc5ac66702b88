// Command mediator is Medius's public edge: the job API (gRPC and REST under
// /v1), API key authentication, and the job repository that follows each job
// to its end.
package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/medius-platform/medius/pkg/flagenv"
	"github.com/medius-platform/medius/services/mediator/internal/app"
	"github.com/medius-platform/medius/services/mediator/internal/jobapi"
	"github.com/medius-platform/medius/services/mediator/internal/tenants"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() { flagenv.Main("mediator", parseFlags, app.Run) }

func parseFlags(args []string) (app.Config, error) {
	cfg := app.Defaults()
	cfg.Version = version
	fs := flagenv.NewFlagSet("mediator")
	fs.StringVar(&cfg.NATSURL, "nats-url", cfg.NATSURL, "NATS server URL")
	etcd := fs.String("etcd-endpoints", "http://127.0.0.1:2379", "etcd endpoints (comma list)")
	fs.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "gRPC listen address")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "REST (/v1) listen address")
	fs.StringVar(&cfg.RegistryAddr, "registry-addr", cfg.RegistryAddr, "service registry gRPC address")
	fs.StringVar(&cfg.BootstrapAPIKey, "bootstrap-api-key", "", "API key registered for the bootstrap tenant on start (prefer MEDIUS_BOOTSTRAP_API_KEY)")
	fs.StringVar(&cfg.BootstrapTenant, "bootstrap-tenant", cfg.BootstrapTenant, "tenant of the bootstrap API key")
	fs.StringVar(&cfg.BootstrapClientID, "bootstrap-client-id", "", "client id registered for the bootstrap tenant on start (with --bootstrap-client-secret)")
	fs.StringVar(&cfg.BootstrapClientSecret, "bootstrap-client-secret", "", "client secret of --bootstrap-client-id (prefer MEDIUS_BOOTSTRAP_CLIENT_SECRET)")
	bootstrapRoots := fs.String("bootstrap-locator-roots", "", "locator roots (comma list: file:///dir/, s3://bucket/prefix/) set on the bootstrap tenant on every start; its file:// and s3:// locators must lie under them (empty: left as an admin set them)")
	fs.StringVar(&cfg.AdminAPIKey, "admin-api-key", "", "operator credential managing tenants, keys and quotas (prefer MEDIUS_ADMIN_API_KEY)")
	fs.StringVar(&cfg.TokenSigningKey, "token-signing-key", "", "HS256 key signing access tokens; empty keeps a random one in etcd (prefer MEDIUS_TOKEN_SIGNING_KEY)")
	fs.BoolVar(&cfg.AllowPrivateWebhooks, "allow-private-webhooks", false, "allow notification endpoints on loopback and private addresses")
	fs.DurationVar(&cfg.Retention.Period, "retention", jobapi.DefaultRetention, "how long terminal jobs without a ttl are kept")
	fs.DurationVar(&cfg.Retention.Interval, "retention-interval", time.Hour, "time between passes deleting jobs past their retention")
	fs.DurationVar(&cfg.Sweep.Interval, "sweep-interval", 5*time.Second, "time between sweeps re-announcing jobs left NEW (a mediator that died mid-submit)")
	fs.DurationVar(&cfg.Sweep.Lookback, "sweep-lookback", 10*time.Minute, "how far back in the jobs bucket a starting sweep reads when etcd holds no cursor")
	fs.IntVar(&cfg.Sweep.MaxPending, "sweep-max-pending", 1<<16, "most young jobs the sweep tracks at once (bounds its memory)")
	fs.DurationVar(&cfg.TokenTTL, "token-ttl", cfg.TokenTTL, "lifetime of access tokens")
	fs.StringVar(&cfg.AdminAddr, "admin-addr", cfg.AdminAddr, "admin listen address (/healthz, /readyz, /metrics)")
	fs.StringVar(&cfg.PprofAddr, "pprof-addr", "", "serve net/http/pprof on this address (profiling; empty disables)")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "log level: debug, info, warn, error")
	fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "log format: json or text")
	fs.StringVar(&cfg.OTLPEndpoint, "otlp-endpoint", "", "OTLP gRPC endpoint (host:port) for traces; empty disables export")
	fs.BoolVar(&cfg.CortexS3, "cortex-s3", false, "Cortex locators may use awsS3Bucket/awsS3Key without httpEndpoint (the workers have an S3 endpoint configured)")
	cortexProfiles := fs.String("cortex-profiles", "", "Cortex to Medius profile map, e.g. MediaCortexSpeechToText=SpeechToText,MediaCortexVideoAnalysis=DetectShots (empty: those defaults)")
	if err := flagenv.Parse(fs, args); err != nil {
		return app.Config{}, err
	}
	if *cortexProfiles != "" {
		cfg.CortexProfiles = map[string]string{}
		for _, kv := range flagenv.List(*cortexProfiles) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" || v == "" {
				return app.Config{}, fmt.Errorf("--cortex-profiles: %q is not CortexProfile=MediusProfile", kv)
			}
			cfg.CortexProfiles[k] = v
		}
	}
	for name, d := range map[string]time.Duration{"retention": cfg.Retention.Period, "retention-interval": cfg.Retention.Interval,
		"sweep-interval": cfg.Sweep.Interval, "sweep-lookback": cfg.Sweep.Lookback} {
		if d <= 0 {
			return app.Config{}, fmt.Errorf("--%s: %s is not a positive duration", name, d)
		}
	}
	if cfg.Sweep.MaxPending <= 0 {
		return app.Config{}, fmt.Errorf("--sweep-max-pending: %d is not a positive count", cfg.Sweep.MaxPending)
	}
	if roots := flagenv.List(*bootstrapRoots); len(roots) > 0 {
		// Checked here so that a bad root stops the start with the flag
		// named, before any connection is made.
		if _, err := tenants.NormalizeLocatorRoots(roots); err != nil {
			return app.Config{}, fmt.Errorf("--bootstrap-locator-roots: %w", err)
		}
		cfg.BootstrapLocatorRoots = roots
	}
	cfg.EtcdEndpoints = flagenv.List(*etcd)
	return cfg, nil
}
