// Package workersdktest runs a workersdk.Runner for a test: started at once,
// stopped (and waited for) when the test ends or when asked.
package workersdktest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/workersdk"
)

// Run starts a runner with cfg until the test ends or the returned stop is
// called; stop waits for Run to return (at most 30 s) and reports its error
// to tb.
func Run(tb testing.TB, cfg workersdk.Config) (stop func()) {
	tb.Helper()
	r, err := workersdk.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					tb.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				tb.Error("Run did not return after its context ended")
			}
		})
	}
	tb.Cleanup(stop)
	return stop
}
