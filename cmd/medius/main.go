// Command medius is the Medius CLI: `medius dev` runs the whole platform on
// one machine; `medius jobs ...` submits and follows jobs.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/medius-platform/medius/cmd/medius/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cli.New().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "medius:", cli.Describe(err))
		os.Exit(1)
	}
}
