package groupcommit_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/medius-platform/medius/services/mediator/internal/groupcommit"
)

// Concurrent calls share commits, each gets its own item's outcome, and
// keys are committed apart.
func TestCallsShareCommits(t *testing.T) {
	var mu sync.Mutex
	commits := 0
	release := make(chan struct{})
	g := groupcommit.New(10, time.Second, func(_ context.Context, key string, batch []int) []error {
		<-release // hold the first commit so that the others queue up
		mu.Lock()
		commits++
		mu.Unlock()
		errs := make([]error, len(batch))
		for i, v := range batch {
			if v%2 == 1 {
				errs[i] = fmt.Errorf("%s odd %d", key, v)
			}
		}
		return errs
	})
	var wg sync.WaitGroup
	results := make([]error, 50)
	for i := range 50 {
		wg.Go(func() { results[i] = g.Do(context.Background(), "k", i) })
	}
	time.Sleep(100 * time.Millisecond) // let the calls queue
	close(release)
	wg.Wait()
	for i, err := range results {
		if (err != nil) != (i%2 == 1) || (err != nil && err.Error() != fmt.Sprintf("k odd %d", i)) {
			t.Fatalf("call %d got %v", i, err)
		}
	}
	// 50 calls, at most 10 per batch: one held commit, then at least 5 more
	// batches, and far fewer commits than calls.
	if commits < 5 || commits > 10 {
		t.Fatalf("%d commits for 50 calls in batches of 10", commits)
	}
}

// A caller whose context ends stops waiting; the batch it led still
// completes for the others.
func TestLeaderCancelDoesNotFailOthers(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	g := groupcommit.New(100, time.Second, func(ctx context.Context, _ string, batch []int) []error {
		once.Do(func() { close(started) })
		<-release
		errs := make([]error, len(batch))
		for i := range errs {
			errs[i] = ctx.Err()
		}
		return errs
	})
	ctx, cancel := context.WithCancel(context.Background())
	leaderDone := make(chan error)
	go func() { leaderDone <- g.Do(ctx, "k", 1) }()
	<-started
	other := make(chan error)
	go func() { other <- g.Do(context.Background(), "k", 2) }()
	cancel()
	close(release)
	if err := <-leaderDone; !errors.Is(err, context.Canceled) && err != nil {
		t.Fatalf("leader: %v", err)
	}
	if err := <-other; err != nil {
		t.Fatalf("other call failed with the leader's cancellation: %v", err)
	}
}
