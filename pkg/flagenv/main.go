package flagenv

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// NewFlagSet returns a flag set for the named binary whose usage text says
// that every flag is also read from MEDIUS_<FLAG>.
func NewFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s [flags]\n\nEvery flag can also be set as MEDIUS_<FLAG> (e.g. MEDIUS_NATS_URL).\n\n", name)
		fs.PrintDefaults()
	}
	return fs
}

// Main is the whole main function of a Medius service binary: parse the
// configuration (exit 0 after -h, exit 2 naming a bad setting), then run
// until SIGINT or SIGTERM cancels ctx (exit 1 if run fails). Keeping it in one
// place keeps every binary's exit codes and signal handling the same, which
// container runtimes and the dev stack rely on.
func Main[C any](name string, parse func(args []string) (C, error), run func(ctx context.Context, cfg C) error) {
	cfg, err := parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: invalid configuration: %v\n", name, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
