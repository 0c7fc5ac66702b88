package workersdk_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/workersdk"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// BenchmarkSubmitToRunning is the latency of a work item on an idle worker
// of capacity 64 (as `make bench` runs it) at 10 items/s: from the publish of
// the item to the handler's start (start-ms) and to RUNNING reaching a
// subscriber of the execution subjects (running-ms). Run it with e.g.
// -benchtime=200x; ns/op is the pacing and means nothing.
func BenchmarkSubmitToRunning(b *testing.B) {
	g := newRig(b)
	var mu sync.Mutex
	submitted := map[string]time.Time{}
	var toStart, toRunning []time.Duration
	reached := make(chan struct{}, 2)
	since := func(job string) (time.Duration, bool) {
		mu.Lock()
		defer mu.Unlock()
		t0, ok := submitted[job]
		return time.Since(t0), ok
	}
	g.watch(b, func(u *eventsv1.ExecutionUpdate) {
		if u.GetStatus() != jobsv1.JobStatus_JOB_STATUS_RUNNING || u.GetMessage() != "" {
			return
		}
		if d, ok := since(u.GetJobId()); ok {
			mu.Lock()
			toRunning = append(toRunning, d)
			mu.Unlock()
			reached <- struct{}{}
		}
	})
	g.run(b, workersdk.Config{Capacity: 64, Profiles: []workersdk.Profile{noOp(func(item *workersdk.WorkItem) {
		if d, ok := since(item.GetJobId()); ok {
			mu.Lock()
			toStart = append(toStart, d)
			mu.Unlock()
			reached <- struct{}{}
		}
	})}})
	// Let the runner reach its steady idle state (pulls waiting).
	time.Sleep(500 * time.Millisecond)

	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	b.ResetTimer()
	for i := range b.N {
		<-tick.C
		job := fmt.Sprintf("lat-%d", i)
		mu.Lock()
		submitted[job] = time.Now()
		mu.Unlock()
		g.submit(b, job)
		for range 2 {
			select {
			case <-reached:
			case <-time.After(10 * time.Second):
				b.Fatalf("item %s not started within 10s", job)
			}
		}
	}
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	reportQuantiles(b, "start", toStart)
	reportQuantiles(b, "running", toRunning)
	b.ReportMetric(0, "ns/op")
}

func reportQuantiles(b *testing.B, name string, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	q := func(p float64) float64 { return float64(ds[int(p*float64(len(ds)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(q(0.5), name+"-p50-ms")
	b.ReportMetric(q(0.99), name+"-p99-ms")
}

// BenchmarkThroughput runs NoOp items through one runner of capacity 64 on
// an in-process NATS: items submitted while the runner works (stream) or all
// queued before it starts (backlog). cpu-us/job is the whole process's CPU
// (NATS server, runner and the submitting test) per item, and
// nats-msgs/job the messages the server received and sent per item: both go
// down when the runner asks NATS for less per job.
func BenchmarkThroughput(b *testing.B) {
	for _, mode := range []string{"stream", "backlog"} {
		b.Run(mode, func(b *testing.B) {
			g := newRig(b)
			var completed atomic.Int64
			allDone := make(chan struct{})
			g.watch(b, func(u *eventsv1.ExecutionUpdate) {
				if u.GetStatus() == jobsv1.JobStatus_JOB_STATUS_COMPLETED && completed.Add(1) == int64(b.N) {
					close(allDone)
				}
			})
			submitAll := func() {
				ctx := context.Background()
				for i := range b.N {
					job := fmt.Sprintf("tp-%d", i)
					msg := &nats.Msg{Subject: bus.SubjectWork(rigService, job), Header: nats.Header{}}
					msg.Data, _ = proto.Marshal(workItem(job))
					if _, err := g.tjs.PublishMsgAsync(msg, jetstream.WithMsgID("work-"+job)); err != nil {
						b.Error(err)
						return
					}
				}
				select {
				case <-g.tjs.PublishAsyncComplete():
				case <-ctx.Done():
				}
			}
			cfg := workersdk.Config{Capacity: 64, Profiles: []workersdk.Profile{noOp(nil)}}
			if mode == "backlog" {
				submitAll()
			} else {
				g.run(b, cfg)
				time.Sleep(300 * time.Millisecond)
			}
			cpu0, msgs0 := processCPU(b), serverMsgs(b, g.nats)
			start := time.Now()
			b.ResetTimer()
			if mode == "backlog" {
				g.run(b, cfg)
			} else {
				go submitAll()
			}
			select {
			case <-allDone:
			case <-time.After(5 * time.Minute):
				b.Fatalf("%d of %d items completed", completed.Load(), b.N)
			}
			b.StopTimer()
			elapsed := time.Since(start)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
			b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/job")
			b.ReportMetric(float64(serverMsgs(b, g.nats)-msgs0)/float64(b.N), "nats-msgs/job")
		})
	}
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func serverMsgs(b *testing.B, n *devenv.NATS) int64 {
	v, err := n.Server.Varz(&server.VarzOptions{})
	if err != nil {
		b.Fatal(err)
	}
	return v.InMsgs + v.OutMsgs
}
