package statusconsumer

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// benchRound is how many jobs' events are published per status before the
// next status: a job's four events are then ~benchRound messages apart in
// the stream, as on a busy platform where many jobs run at once, rather
// than side by side.
const benchRound = 256

// BenchmarkConsume applies a backlog of status events (QUEUED, SCHEDULED,
// RUNNING, COMPLETED: 4 per job, b.N jobs) through the durable consumer
// against embedded NATS, and reports what NATS had to carry per job while
// the consumer drained it: messages in and out of the server (deliveries,
// acks, KV requests and their replies), job-record writes, and the CPU time
// the process (NATS server included) spent: on a shared machine the CPU per
// job compares before and after more fairly than the wall-clock rate.
//
//	go test -run '^$' -bench Consume -benchtime 5000x ./services/mediator/internal/statusconsumer/
func BenchmarkConsume(b *testing.B) {
	for _, warm := range []bool{true, false} {
		name := "created-here"
		if !warm {
			name = "created-elsewhere"
		}
		// created-here: this process created the jobs (one mediator);
		// created-elsewhere: another replica did, so nothing is known of them.
		b.Run(name, func(b *testing.B) { benchConsume(b, warm) })
	}
}

func benchConsume(b *testing.B, warm bool) {
	n, err := devenv.StartNATS(filepath.Join(b.TempDir(), "nats"), 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(n.Shutdown)
	nc, js, err := bus.Connect(n.URL, b.Name())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	ctx := context.Background()
	if err := bus.Provision(ctx, js); err != nil {
		b.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, bus.BucketJobs)
	if err != nil {
		b.Fatal(err)
	}
	creator := jobstore.New(kv)
	params, _ := structpb.NewStruct(map[string]any{"language": "en", "formats": []any{"srt", "vtt"}})
	ids := make([]string, b.N)
	for i := range ids {
		ids[i], _ = jobstore.NewID()
		job := &jobsv1.Job{
			Id: ids[i], Tenant: "acme", Status: jobsv1.JobStatus_JOB_STATUS_NEW,
			JobType: "AIJob", Profile: "NoOp", CreateTime: timestamppb.Now(),
			Input: &jobsv1.JobInput{Parameters: params},
		}
		if _, err := creator.Create(ctx, job); err != nil {
			b.Fatal(err)
		}
	}
	for start := 0; start < len(ids); start += benchRound {
		round := ids[start:min(start+benchRound, len(ids))]
		for _, status := range []jobsv1.JobStatus{statusQueued, statusScheduled, statusRunning, statusCompleted} {
			for _, id := range round {
				e := ev(status, 1, 0)
				if status == statusQueued {
					e = ev(status, 0, 0) // the processor sends no execution while queued
				}
				if status == statusCompleted {
					e.Progress = 100
				}
				e.JobId = id
				if err := bus.Publish(ctx, js, bus.SubjectJobStatus(id), fmt.Sprintf("%s-%d", id, status), e); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	store := creator
	if !warm {
		store = jobstore.New(kv)
	}
	var mu sync.Mutex
	done := make(map[string]bool, b.N)
	all := make(chan struct{})
	c := New(store)
	c.OnTerminal(func(_ context.Context, job *jobsv1.Job) error {
		mu.Lock()
		defer mu.Unlock()
		if !done[job.GetId()] {
			done[job.GetId()] = true
			if len(done) == b.N {
				close(all)
			}
		}
		return nil
	})

	bucket, err := js.Stream(ctx, "KV_"+bus.BucketJobs)
	if err != nil {
		b.Fatal(err)
	}
	before, _ := n.Server.Varz(nil)
	binfo, err := bucket.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	cpuBefore := cpuTime(b)
	b.ResetTimer()
	start := time.Now()
	go func() { stopped <- c.Run(runCtx, js) }()
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		b.Fatal("backlog not applied within 5 minutes")
	}
	elapsed := time.Since(start)
	cpu := cpuTime(b) - cpuBefore
	b.StopTimer()

	// The last acks may still be on their way: wait until the server has
	// them, so they are counted.
	cons, err := js.Consumer(ctx, bus.StreamEvents, Durable)
	if err != nil {
		b.Fatal(err)
	}
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if info.NumAckPending == 0 && info.NumPending == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	after, _ := n.Server.Varz(nil)
	ainfo, err := bucket.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	cancel()
	if err := <-stopped; err != nil {
		b.Fatal(err)
	}
	for _, id := range ids[:min(len(ids), 50)] {
		job, _, err := store.Get(ctx, id)
		if err != nil || job.GetStatus() != statusCompleted || job.GetProgress() != 100 || len(job.GetExecutions()) != 1 {
			b.Fatalf("job %s after the backlog: %v %v", id, job, err)
		}
	}
	perJob := func(v int64) float64 { return float64(v) / float64(b.N) }
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
	b.ReportMetric(perJob(after.InMsgs-before.InMsgs), "nats-in/job")
	b.ReportMetric(perJob(after.OutMsgs-before.OutMsgs), "nats-out/job")
	b.ReportMetric(perJob(int64(ainfo.State.LastSeq-binfo.State.LastSeq)), "writes/job")
	b.ReportMetric(perJob(cpu.Microseconds()), "cpu-µs/job")
}

// cpuTime is the user and system CPU time this process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
