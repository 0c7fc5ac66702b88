// Command service-registry keeps Medius's service definitions, job profiles
// and live service instances (on etcd leases) and publishes instance up/down
// events on NATS. See docs/internals.md for its flags, keys and subjects.
package main

import (
	"fmt"

	"github.com/medius-platform/medius/pkg/flagenv"
	"github.com/medius-platform/medius/services/service-registry/internal/app"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() { flagenv.Main("service-registry", parseConfig, app.Run) }

func parseConfig(args []string) (app.Config, error) {
	cfg := app.Defaults()
	cfg.Version = version
	fs := flagenv.NewFlagSet("service-registry")
	fs.StringVar(&cfg.NATSURL, "nats-url", cfg.NATSURL, "NATS server URL")
	etcd := fs.String("etcd-endpoints", "http://127.0.0.1:2379", "etcd endpoints, comma separated")
	fs.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "gRPC listen address (registry API and health)")
	fs.StringVar(&cfg.AdminAddr, "admin-addr", cfg.AdminAddr, "admin HTTP listen address (/healthz, /readyz, /metrics)")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "lease ttl of instances that do not ask for one")
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
	return cfg, cfg.Validate()
}
