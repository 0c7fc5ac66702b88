package processor

import (
	"context"
	"sync"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/services/job-processor/internal/record"
)

// Concurrent writers of one record (replicas handling events of the same job)
// never lose each other's changes: each conflict reloads and re-applies.
func TestStoreUpdateConcurrent(t *testing.T) {
	n, err := devenv.StartNATS(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, js, err := bus.Connect(n.URL, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := bus.Provision(ctx, js); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, bus.BucketExecutions)
	if err != nil {
		t.Fatal(err)
	}
	s := store{kv: kv}

	// Each writer adds executions; the first one to write creates the record.
	const writers, each = 4, 10
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range each {
				for {
					_, _, err := s.update(ctx, "job-c", func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
						if rec == nil {
							rec = &jobsv1.Job{Id: "job-c"}
						}
						rec.Executions = append(rec.Executions, &jobsv1.Execution{Attempt: record.NextAttempt(rec)})
						return rec, record.Applied, nil
					})
					if err == nil {
						break
					}
					// Out of conflict retries: as a redelivery would, try again.
					if ctx.Err() != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	rec, _, err := s.get(ctx, "job-c")
	if err != nil {
		t.Fatal(err)
	}
	if got := len(rec.GetExecutions()); got != writers*each {
		t.Fatalf("%d executions, want %d: updates were lost", got, writers*each)
	}
	for i, ex := range rec.Executions {
		if ex.Attempt != int32(i+1) {
			t.Fatalf("execution %d has attempt %d", i, ex.Attempt)
		}
	}
}
