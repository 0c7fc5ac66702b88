package processor_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/services/job-processor/internal/processor"
	"github.com/medius-platform/medius/services/job-processor/internal/selection"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// BenchmarkJetStreamOpsPerJob counts the NATS messages one NoOp job costs,
// JobCreated to COMPLETED announced and its timer acked, with the default
// timings of a deployment: the processor's own connection (what it sends:
// publishes, KV requests, acks and naks; what it receives: deliveries and
// replies) and the server as a whole (worker and test traffic included,
// the same before and after a change). The NATS server's CPU follows these
// counts, so they are what the processor's hot path is tuned against.
//
//	go test -run '^$' -bench JetStreamOps -benchtime 1x ./services/job-processor/internal/processor
//
// MEDIUS_OPS_JOBS sets the job count (default 1000); MEDIUS_OPS_BREAKDOWN=1
// also logs what the messages were, by kind (which doubles the server's
// out count: it sees every message once more).
func BenchmarkJetStreamOpsPerJob(b *testing.B) {
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	jobs := 1000
	if v, err := strconv.Atoi(os.Getenv("MEDIUS_OPS_JOBS")); err == nil && v > 0 {
		jobs = v
	}
	for range b.N {
		opsRun(b, jobs)
	}
}

func opsRun(b *testing.B, jobs int) {
	n, err := devenv.StartNATS(b.TempDir(), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer n.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	connect := func(name string) (*nats.Conn, *bundle) {
		nc, js, err := bus.Connect(n.URL, name)
		if err != nil {
			b.Fatal(err)
		}
		return nc, &bundle{ctx: ctx, nc: nc, js: js}
	}
	tnc, t := connect("test")
	defer tnc.Close()
	if err := bus.Provision(ctx, t.js); err != nil {
		b.Fatal(err)
	}
	pnc, p := connect("processor")
	defer pnc.Close()
	wnc, w := connect("worker")
	defer wnc.Close()

	proc, err := processor.New(ctx, processor.Config{JS: p.js, NC: pnc, Selector: selection.New(oneService()), Profiles: profiles{"P": {Name: "P"}}})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	procDone := make(chan error, 1)
	go func() { procDone <- proc.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-procDone; err != nil {
			b.Errorf("processor: %v", err)
		}
	}()
	// The worker, as the worker SDK does it for a NoOp profile (done within
	// its running delay): COMPLETED alone, with its start, then the item's
	// plain ack.
	cons, err := bus.EnsureConsumer(ctx, w.js, bus.ConsumerConfig{Stream: bus.StreamWork, Durable: "worker-probe", Filter: []string{bus.WorkQueue("probe")}})
	if err != nil {
		b.Fatal(err)
	}
	var working sync.WaitGroup
	defer working.Wait()
	cc, err := cons.Consume(func(m jetstream.Msg) {
		item := &eventsv1.WorkItem{}
		if err := proto.Unmarshal(m.Data(), item); err != nil {
			b.Error(err)
			return
		}
		working.Go(func() {
			st := jobsv1.JobStatus_JOB_STATUS_COMPLETED
			u := &eventsv1.ExecutionUpdate{JobId: item.GetJobId(), Attempt: item.GetAttempt(), Service: "probe", InstanceId: "probe-1", Status: st,
				Time: timestamppb.Now(), StartTime: timestamppb.Now()}
			msgID := fmt.Sprintf("exec-%s-%d-probe-1-%s", u.GetJobId(), u.GetAttempt(), jobstate.Name(st))
			if err := bus.Publish(ctx, w.js, bus.SubjectExecution(u.GetJobId()), msgID, u); err != nil {
				b.Error(err)
				return
			}
			if err := m.Ack(); err != nil {
				b.Error(err)
			}
		})
	}, jetstream.PullMaxMessages(64))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Stop()
	for !proc.Ready() {
		time.Sleep(10 * time.Millisecond)
	}

	var done atomic.Int64
	sub, err := tnc.Subscribe(bus.SubjectJobStatus("*"), func(m *nats.Msg) {
		ev := &eventsv1.JobStatusChanged{}
		if proto.Unmarshal(m.Data, ev) == nil && ev.GetStatus() == jobsv1.JobStatus_JOB_STATUS_COMPLETED {
			done.Add(1)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	var kinds *breakdown
	if os.Getenv("MEDIUS_OPS_BREAKDOWN") != "" {
		kinds = &breakdown{n: map[string]int{}}
		all, err := tnc.Subscribe(">", kinds.see)
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = all.Unsubscribe() }()
	}
	if err := tnc.Flush(); err != nil {
		b.Fatal(err)
	}
	// Let the consumers' start-up traffic pass before counting.
	time.Sleep(500 * time.Millisecond)

	kinds.reset()
	varz := func() (in, out int64) {
		v, err := n.Server.Varz(nil)
		if err != nil {
			b.Fatal(err)
		}
		return v.InMsgs, v.OutMsgs
	}
	pStart := pnc.Stats()
	sIn, sOut := varz()
	b.ResetTimer()
	start := time.Now()
	for i := range jobs {
		id := fmt.Sprintf("job-%d", i)
		job := &jobsv1.Job{Id: id, Tenant: "t1", Profile: "P", JobType: "AmeJob", Status: jobsv1.JobStatus_JOB_STATUS_NEW, CreateTime: timestamppb.Now()}
		if err := bus.Publish(ctx, t.js, bus.SubjectJobCreated, "created-"+id, &eventsv1.JobCreated{Job: job}); err != nil {
			b.Fatal(err)
		}
	}
	for done.Load() < int64(jobs) {
		if ctx.Err() != nil {
			b.Fatalf("%d of %d jobs completed", done.Load(), jobs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	// Every timer ends (its first check finds the job over) before counting.
	for {
		c, err := t.js.Consumer(ctx, bus.StreamEvents, processor.DurableTimer)
		if err != nil {
			b.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			break
		}
		if ctx.Err() != nil {
			b.Fatalf("timers pending: %+v", info)
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.StopTimer()
	pEnd := pnc.Stats()
	sIn2, sOut2 := varz()
	per := func(d float64) float64 { return d / float64(jobs) }
	b.ReportMetric(per(float64(pEnd.OutMsgs-pStart.OutMsgs)), "proc-out/job")
	b.ReportMetric(per(float64(pEnd.InMsgs-pStart.InMsgs)), "proc-in/job")
	b.ReportMetric(per(float64(sIn2-sIn)), "server-in/job")
	b.ReportMetric(per(float64(sOut2-sOut)), "server-out/job")
	b.ReportMetric(float64(jobs)/elapsed.Seconds(), "jobs/s")
	kinds.log(b, jobs)
}

// breakdown tallies the messages the server routes, by kind.
type breakdown struct {
	mu sync.Mutex
	n  map[string]int
}

func (k *breakdown) see(m *nats.Msg) {
	kind := m.Subject
	switch {
	case strings.HasPrefix(m.Reply, "$JS.ACK."):
		// A consumer's delivery keeps its subject; its reply names the consumer.
		kind = "delivery " + strings.Split(m.Reply, ".")[3]
	case strings.HasPrefix(kind, "$JS.ACK."):
		// $JS.ACK.<stream>.<consumer>...: which consumer, and ack or nak.
		parts := strings.Split(kind, ".")
		verb, _, _ := strings.Cut(string(m.Data), " ")
		kind = "ack " + parts[3] + " " + verb
	case strings.HasPrefix(kind, "_INBOX."):
		kind = "reply (_INBOX)"
	case strings.HasPrefix(kind, "$JS.API.CONSUMER.MSG.NEXT."):
		kind = "pull request " + kind[len("$JS.API.CONSUMER.MSG.NEXT."):]
	case strings.HasPrefix(kind, "$JS.API.DIRECT.GET."):
		kind = "direct get " + strings.Split(kind, ".")[4]
	case strings.HasPrefix(kind, "$KV."):
		kind = "kv write " + strings.Split(kind, ".")[1]
	case strings.HasPrefix(kind, "$JS.API."):
		kind = "api " + strings.Join(strings.Split(kind, ".")[2:4], ".")
	default:
		if i := strings.LastIndexByte(kind, '.'); i > 0 {
			kind = kind[:i] + ".<id>"
		}
	}
	k.mu.Lock()
	k.n[kind]++
	k.mu.Unlock()
}

func (k *breakdown) reset() {
	if k == nil {
		return
	}
	k.mu.Lock()
	clear(k.n)
	k.mu.Unlock()
}

func (k *breakdown) log(b *testing.B, jobs int) {
	if k == nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	names := slices.Sorted(maps.Keys(k.n))
	var sb strings.Builder
	for _, name := range names {
		fmt.Fprintf(&sb, "\n%8.2f/job  %s", float64(k.n[name])/float64(jobs), name)
	}
	b.Logf("messages by kind:%s", sb.String())
}
