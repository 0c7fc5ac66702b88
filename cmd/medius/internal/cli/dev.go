package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/medius-platform/medius/pkg/devstack"
	"github.com/spf13/cobra"
)

func newDevCmd() *cobra.Command {
	var cfg devstack.Config
	var roots []string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole platform locally: embedded NATS and etcd plus the four services",
		Long: `Runs NATS JetStream and etcd in this process, with data under --dir, and the
four service binaries from --bin-dir as child processes wired to them. Prints
the REST and gRPC addresses and the bootstrap API key; Ctrl-C stops
everything cleanly. A second run reuses the data and the key.

The key is MEDIUS_BOOTSTRAP_API_KEY when set, else generated once and kept in
--dir/bootstrap-api-key. Likewise the default tenant's client id and secret
(token exchange, Cortex access-token) come from MEDIUS_BOOTSTRAP_CLIENT_ID and
MEDIUS_BOOTSTRAP_CLIENT_SECRET, and the admin credential managing tenants
from MEDIUS_ADMIN_API_KEY, else they are generated and kept in --dir.

The default tenant's locator roots are the --file-roots (file://<root>/ each),
set on every start: its jobs may name files under them. Other tenants may
name no file:// or s3:// locator until an admin grants them roots of their
own (medius tenants set-locator-roots).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if cfg.APIKey == "" {
				cfg.APIKey = os.Getenv("MEDIUS_BOOTSTRAP_API_KEY")
			}
			cfg.ClientID = os.Getenv("MEDIUS_BOOTSTRAP_CLIENT_ID")
			cfg.ClientSecret = os.Getenv("MEDIUS_BOOTSTRAP_CLIENT_SECRET")
			cfg.AdminKey = os.Getenv("MEDIUS_ADMIN_API_KEY")
			var err error
			if cfg.Dir, err = filepath.Abs(cfg.Dir); err != nil {
				return err
			}
			for _, r := range roots {
				abs, err := filepath.Abs(r)
				if err != nil {
					return err
				}
				cfg.FileRoots = append(cfg.FileRoots, abs)
			}
			start := time.Now()
			fmt.Fprintf(cmd.OutOrStdout(), "starting Medius (data in %s, logs in %s)...\n", cfg.Dir, filepath.Join(cfg.Dir, "logs"))
			stack, err := devstack.Start(ctx, cfg)
			if err != nil {
				return fmt.Errorf("start dev stack: %w", err)
			}
			defer stack.Stop()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "\nMedius is up in %s\n\n", time.Since(start).Round(time.Millisecond))
			fmt.Fprintf(out, "  REST        http://%s/v1   (OpenAPI: http://%s/v1/openapi.json)\n", stack.RESTAddr, stack.RESTAddr)
			fmt.Fprintf(out, "  gRPC        %s\n", stack.GRPCAddr)
			fmt.Fprintf(out, "  NATS        %s\n", stack.NATS.URL)
			fmt.Fprintf(out, "  etcd        %s\n", stack.Etcd.Endpoints[0])
			fmt.Fprintf(out, "  tenant      default\n")
			fmt.Fprintf(out, "  API key     %s\n", stack.APIKey)
			fmt.Fprintf(out, "  client id   %s\n", stack.ClientID)
			fmt.Fprintf(out, "  secret      %s\n", stack.ClientSecret)
			fmt.Fprintf(out, "  admin key   %s\n", stack.AdminKey)
			fmt.Fprintf(out, "  file roots  %v\n", cfg.FileRoots)
			fmt.Fprintf(out, "  locator roots of default  %v   (other tenants: medius tenants set-locator-roots ID ROOT...)\n\n", stack.LocatorRoots)
			// The example names a file under the default tenant's roots:
			// anything else is refused (locator-not-allowed).
			example := "file:///path/to/media.mp4"
			if len(stack.LocatorRoots) > 0 {
				example = stack.LocatorRoots[0] + "media.mp4"
			}
			fmt.Fprintf(out, "Try:\n  curl -s -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' \\\n"+
				"    -d '{\"profile\":\"ExtractTechnicalMetadata\",\"input\":{\"locators\":{\"inputFile\":{\"url\":\"%s\"}}}}' \\\n"+
				"    http://%s/v1/jobs\n\nCtrl-C to stop.\n", stack.APIKey, example, stack.RESTAddr)
			watchChildren(ctx, out, stack)
			fmt.Fprintln(out, "\nstopping...")
			stack.Stop()
			fmt.Fprintln(out, "stopped")
			return nil
		},
	}
	cwd, _ := os.Getwd()
	f := cmd.Flags()
	f.StringVar(&cfg.Dir, "dir", ".medius", "data directory (NATS store, etcd data, logs)")
	f.StringVar(&cfg.BinDir, "bin-dir", "bin", "directory with the service binaries")
	f.StringVar(&cfg.RESTAddr, "rest-addr", "127.0.0.1:8080", "REST listen address")
	f.StringVar(&cfg.GRPCAddr, "grpc-addr", "127.0.0.1:9090", "gRPC listen address")
	f.StringSliceVar(&roots, "file-roots", []string{cwd}, "directories file:// locators may name")
	f.IntVar(&cfg.Workers, "workers", 1, "number of job-worker processes")
	return cmd
}

// watchChildren says when a service of the stack exits on its own (a crash,
// a kill), once each, until ctx ends: a user trying the platform should not
// learn it from a job that never runs.
func watchChildren(ctx context.Context, out io.Writer, stack *devstack.Stack) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	told := map[*devstack.Process]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, p := range stack.Processes() {
			if exited, err := p.Exited(); exited && !told[p] {
				told[p] = true
				fmt.Fprintf(out, "%s %s exited: %v (its log: %s)\n", time.Now().Format("15:04:05"), p.Name, err, p.LogPath())
			}
		}
	}
}
