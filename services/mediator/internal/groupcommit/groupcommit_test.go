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

// A leader whose context ends while it commits gets its batch's outcome,
// and the batch completes for the others.
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
	if err := <-leaderDone; err != nil {
		t.Fatalf("leader canceled while its batch committed: %v, want its outcome (nil)", err)
	}
	if err := <-other; err != nil {
		t.Fatalf("other call failed with the leader's cancellation: %v", err)
	}
}

// A caller that gives up learns what happened to its item: withdrawn while
// it waited (never committed), or, once its batch is being committed, that
// batch's outcome.
func TestCancelAnswersWhatHappened(t *testing.T) {
	var mu sync.Mutex
	var committed []int
	commits := make(chan chan struct{}) // each commit waits for a release
	g := groupcommit.New(100, time.Minute, func(_ context.Context, _ string, batch []int) []error {
		release := make(chan struct{})
		commits <- release
		<-release
		mu.Lock()
		committed = append(committed, batch...)
		mu.Unlock()
		return make([]error, len(batch))
	})
	do := func(ctx context.Context, item int) chan error {
		done := make(chan error, 1)
		go func() { done <- g.Do(ctx, "k", item) }()
		return done
	}
	first := do(context.Background(), 1)
	releaseFirst := <-commits // 1 is being committed alone
	queuedCtx, giveUpQueued := context.WithCancel(context.Background())
	queued := do(queuedCtx, 2)
	inBatchCtx, giveUpInBatch := context.WithCancel(context.Background())
	inBatch := do(inBatchCtx, 3)
	time.Sleep(100 * time.Millisecond) // let 2 and 3 queue behind 1

	giveUpQueued() // 2 waits for a batch: withdrawn
	if err := <-queued; !errors.Is(err, context.Canceled) {
		t.Fatalf("a call given up while queued: %v, want canceled", err)
	}
	if err := <-do(queuedCtx, 4); !errors.Is(err, context.Canceled) { // given up before it asked
		t.Fatalf("a call made on an ended ctx: %v, want canceled", err)
	}
	close(releaseFirst)
	releaseSecond := <-commits // 3's batch is being committed
	giveUpInBatch()
	select {
	case err := <-inBatch:
		t.Fatalf("a call given up while its batch commits answered %v before the commit did", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(releaseSecond)
	if err := <-inBatch; err != nil {
		t.Fatalf("a call given up while its batch committed it: %v, want its outcome (nil)", err)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(committed) != "[1 3]" {
		t.Fatalf("committed %v, want [1 3]: the withdrawn item never", committed)
	}
}
