package main_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
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
	"github.com/medius-platform/medius/pkg/devstack"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
)

// platformResult is what one run of BenchmarkPlatform measured.
type platformResult struct {
	e2e, submit, ceiling       float64 // per second
	p50, p99, fullP50, fullP99 time.Duration
}

var (
	platformOnce sync.Once
	platformRes  platformResult
)

// BenchmarkPlatform measures the four binaries as separate processes on
// file-backed JetStream with the NoOp profile: end-to-end throughput (submit
// -> COMPLETED) at full load, latency from submit to the worker's start at
// full load and at 10 jobs/s, and, as the ceiling, the raw JetStream
// publish+consume rate of the same server. The run is done once per process
// whatever b.N is; it ends with one RESULT line. MEDIUS_BENCH_JOBS sets the
// full-load job count (default 5000).
func BenchmarkPlatform(b *testing.B) {
	platformOnce.Do(func() { platformRes = runPlatform(b) })
	r := platformRes
	b.ReportMetric(r.e2e, "e2e_jobs/s")
	b.ReportMetric(float64(r.p50.Microseconds())/1000, "p50_ms@10/s")
	b.ReportMetric(float64(r.p99.Microseconds())/1000, "p99_ms@10/s")
	b.ReportMetric(r.ceiling, "ceiling_msgs/s")
}

// starts records when a job was submitted and when its worker started it.
type starts struct {
	mu        sync.Mutex
	submitted map[string]time.Time
	started   map[string]time.Time
	completed atomic.Int64
	allDone   chan struct{}
	want      int64
	// stages: when the test saw each step of a job (its own clock).
	stages map[string]*[3]time.Time
}

// Steps of a job as seen on the bus. SCHEDULED is not one: a job done
// within the processor's ScheduledDelay is never announced SCHEDULED.
const (
	seenCreated       = iota // mediator announced JobCreated
	seenWorkerDone           // worker reported COMPLETED
	seenAnnouncedDone        // processor announced COMPLETED
)

func (s *starts) saw(id string, step int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stages[id]
	if st == nil {
		st = &[3]time.Time{}
		s.stages[id] = st
	}
	if st[step].IsZero() {
		st[step] = time.Now()
	}
}

func newStarts(want int) *starts {
	return &starts{submitted: map[string]time.Time{}, started: map[string]time.Time{}, allDone: make(chan struct{}), want: int64(want),
		stages: map[string]*[3]time.Time{}}
}

func (s *starts) onExec(m *nats.Msg) {
	u := &eventsv1.ExecutionUpdate{}
	if proto.Unmarshal(m.Data, u) != nil || u.GetAttempt() != 1 {
		return
	}
	switch u.GetStatus() {
	case jobsv1.JobStatus_JOB_STATUS_COMPLETED:
		s.saw(u.GetJobId(), seenWorkerDone)
	case jobsv1.JobStatus_JOB_STATUS_RUNNING:
		// A NoOp job is done before RUNNING is due (workersdk's
		// RunningDelay); a slow machine may still send one.
	default:
		return
	}
	// The worker's start: RUNNING is dated from it, and a job done before
	// RUNNING was due has it in its COMPLETED.
	at := u.GetStartTime()
	if !at.IsValid() {
		at = u.GetTime()
	}
	s.mu.Lock()
	if _, ok := s.started[u.GetJobId()]; !ok {
		s.started[u.GetJobId()] = at.AsTime()
	}
	s.mu.Unlock()
}

func (s *starts) onStatus(m *nats.Msg) {
	ev := &eventsv1.JobStatusChanged{}
	if proto.Unmarshal(m.Data, ev) != nil {
		return
	}
	if ev.GetStatus() != jobsv1.JobStatus_JOB_STATUS_COMPLETED {
		return
	}
	s.saw(ev.GetJobId(), seenAnnouncedDone)
	if s.completed.Add(1) == s.want {
		close(s.allDone)
	}
}

// breakdown is the median time of each step of a job: where time goes.
func (s *starts) breakdown() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	type at func(string, *[3]time.Time) time.Time
	med := func(from, to at) time.Duration {
		var d []time.Duration
		for id, st := range s.stages {
			if f, t := from(id, st), to(id, st); !f.IsZero() && !t.IsZero() {
				d = append(d, t.Sub(f))
			}
		}
		if len(d) == 0 {
			return 0
		}
		slices.Sort(d)
		return d[len(d)/2]
	}
	step := func(i int) at {
		return func(_ string, st *[3]time.Time) time.Time { return st[i] }
	}
	submitted := func(id string, _ *[3]time.Time) time.Time { return s.submitted[id] }
	// The worker's own clock, on the same machine.
	started := func(id string, _ *[3]time.Time) time.Time { return s.started[id] }
	return fmt.Sprintf("median submit->JobCreated %s, JobCreated->worker start %s, worker start->worker COMPLETED %s, worker COMPLETED->announced %s",
		med(submitted, step(seenCreated)), med(step(seenCreated), started), med(started, step(seenWorkerDone)), med(step(seenWorkerDone), step(seenAnnouncedDone)))
}

// latencies returns p50 and p99 of submit -> worker start.
func (s *starts) latencies(b *testing.B) (p50, p99 time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var d []time.Duration
	for id, sub := range s.submitted {
		if st, ok := s.started[id]; ok {
			d = append(d, st.Sub(sub))
		}
	}
	if len(d) == 0 {
		b.Fatal("no job started")
	}
	slices.Sort(d)
	return d[len(d)/2], d[min(len(d)-1, len(d)*99/100)]
}

func runPlatform(b *testing.B) platformResult {
	n := 5000
	if v, err := strconv.Atoi(os.Getenv("MEDIUS_BENCH_JOBS")); err == nil && v > 0 {
		n = v
	}
	// Each Go service but the registry serves pprof, for MEDIUS_BENCH_PPROF.
	pprofAddr := map[string]string{}
	for _, svc := range []string{"mediator", "job-processor", "job-worker"} {
		addr, err := devenv.FreeAddr()
		if err != nil {
			b.Fatal(err)
		}
		pprofAddr[svc] = addr
	}
	// MEDIUS_BENCH_CAPACITY sets the worker's capacity. The default, 256,
	// is what one would give a profile that costs nothing: at 64, under
	// full load each slot spends tens of milliseconds on its job's round
	// trips and the single worker, not the platform, sets the pace.
	capacity := "256"
	if v, err := strconv.Atoi(os.Getenv("MEDIUS_BENCH_CAPACITY")); err == nil && v > 0 {
		capacity = strconv.Itoa(v)
	}
	args := map[string][]string{"job-worker": {"--capacity", capacity, "--pprof-addr", pprofAddr["job-worker"]},
		"job-processor": {"--queue-timeout", "10m", "--pprof-addr", pprofAddr["job-processor"]},
		"mediator":      {"--pprof-addr", pprofAddr["mediator"]}}
	// MEDIUS_BENCH_OTLP=<host:port> sends every service's traces to that
	// OTLP gRPC endpoint: each job's spans show where its time goes.
	if ep := os.Getenv("MEDIUS_BENCH_OTLP"); ep != "" {
		for _, s := range []string{"job-worker", "job-processor", "mediator", "service-registry"} {
			args[s] = append(args[s], "--otlp-endpoint", ep)
		}
	}
	l := startLab(b, devstack.Config{
		Workers: 1,
		Args:    args,
		Env:     []string{"MEDIUS_LOG_LEVEL=warn"},
	})
	nc, js, err := bus.Connect(l.stack.NATS.URL, "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	var r platformResult
	noop := &jobsv1.Job{Profile: "NoOp"}
	create := func(int) (string, time.Time, error) {
		t := time.Now()
		job, err := l.jobs.CreateJob(authed(context.Background()), &jobsv1.CreateJobRequest{Job: noop})
		return job.GetId(), t, err
	}
	// A few jobs first, so the light-load figures are of a warm platform
	// (connections, credential and profile caches), as a steady 10 jobs/s is.
	l.measure(b, nc, 20, create, 1)

	hp50, hp99 := handOff(b, l.stack.NATS.URL, 200)
	b.Logf("floor: one JetStream hand-off on this server, quiet (publish -> another connection's consumer handler, in one process): p50 %s p99 %s; submit -> worker start is an API call and two hand-offs",
		hp50, hp99)

	// Light load first, on an otherwise quiet platform: after a burst the
	// consumers would still be catching up, and that is the full-load
	// figure, not this one. 10 jobs/s through CreateJob, one at a time.
	const light = 100
	tick := time.NewTicker(100 * time.Millisecond)
	var calls []time.Duration
	run := l.measure(b, nc, light, func(i int) (string, time.Time, error) {
		<-tick.C
		id, t, err := create(i)
		calls = append(calls, time.Since(t))
		return id, t, err
	}, 1)
	tick.Stop()
	slices.Sort(calls)
	r.p50, r.p99 = run.p50, run.p99
	b.Logf("10 jobs/s via CreateJob: submit -> worker start p50 %s p99 %s (the CreateJob call alone: median %s); %s",
		r.p50, r.p99, calls[len(calls)/2], run.ops)

	// Full load through the API: CreateJob from 64 concurrent clients.
	api := min(n, 1000)
	run = l.measure(b, nc, api, create)
	r.submit = run.submitRate
	b.Logf("full load via CreateJob: %d NoOp jobs submitted at %.0f jobs/s (64 concurrent calls), %.0f jobs/s end to end; submit -> worker start p50 %s p99 %s; %s",
		api, run.submitRate, run.e2e, run.p50, run.p99, run.ops)

	// Full load, batch submit: BatchCreateJobs, the API a client with many
	// jobs to submit uses (batchSubmit).
	//
	// MEDIUS_BENCH_PPROF=<prefix> keeps a 10 s CPU profile of the mediator,
	// the processor and the worker under this load, in
	// <prefix>-<service>.pprof (the test's own process, which runs NATS and
	// etcd, is profiled by go test -cpuprofile).
	var profiles sync.WaitGroup
	if prefix := os.Getenv("MEDIUS_BENCH_PPROF"); prefix != "" {
		for svc, addr := range pprofAddr {
			profiles.Go(func() {
				if err := saveProfile(addr, prefix+"-"+svc+".pprof"); err != nil {
					b.Logf("profile of %s: %v", svc, err)
				}
			})
		}
	}
	run = l.measureWith(b, nc, n, func(record func(string, time.Time)) error {
		return batchSubmit(authed(context.Background()), l.jobs, n, record)
	})
	profiles.Wait()
	r.e2e, r.fullP50, r.fullP99 = run.e2e, run.p50, run.p99
	b.Logf("full load, batch submit (BatchCreateJobs, %d jobs a call, %d calls at a time; one worker of capacity %s): %d NoOp jobs created at %.0f jobs/s, %.0f jobs/s end to end; submit -> worker start p50 %s p99 %s; %s",
		batchSize, batchCalls, capacity, n, run.submitRate, run.e2e, run.p50, run.p99, run.ops)
	// The burst queued n jobs faster than the worker's capacity takes them:
	// what each process's memory peaked at shows whether it grew with the
	// backlog (MEDIUS_BENCH_JOBS=100000 for the 100k burst).
	b.Logf("peak memory (VmHWM) after %d queued jobs: %s", n, peakRSS(l))

	r.ceiling = ceiling(b, js, n)
	b.Logf("ceiling: raw JetStream publish+consume on the same server (file storage): %.0f msgs/s", r.ceiling)
	fmt.Printf("SUBMIT api_jobs_per_s=%.0f (CreateJob, 64 concurrent)\n", r.submit)
	fmt.Printf("RESULT e2e_jobs_per_s=%.0f p50_ms=%.2f p99_ms=%.2f ceiling_msgs_per_s=%.0f\n",
		r.e2e, float64(r.p50.Microseconds())/1000, float64(r.p99.Microseconds())/1000, r.ceiling)
	return r
}

type runResult struct {
	submitRate, e2e float64
	p50, p99        time.Duration
	ops             string // operations per job, see work
}

// work is what the infrastructure did: messages into and out of NATS (every
// publish, KV read, ack and pull request is one in; every delivery one out)
// and requests to etcd's KV service. Per job, it is what the platform costs.
type work struct {
	natsIn, natsOut, etcd float64
	// byClient is the messages each client (by connection name, its first
	// word) sent into NATS.
	byClient map[string]float64
	// cpu is the CPU time (user and system, seconds) each process used:
	// the services by name, and "bench" for the test's own process, which
	// runs NATS, etcd and the benchmark's clients.
	cpu map[string]float64
}

func (l *lab) work(b *testing.B) work {
	v, err := l.stack.NATS.Server.Varz(nil)
	if err != nil {
		b.Fatal(err)
	}
	w := work{natsIn: float64(v.InMsgs), natsOut: float64(v.OutMsgs), byClient: map[string]float64{}, cpu: map[string]float64{}}
	w.cpu["bench"] = cpuSeconds("self")
	for _, p := range l.stack.Processes() {
		w.cpu[p.Name] += cpuSeconds(strconv.Itoa(p.Pid()))
	}
	cz, err := l.stack.NATS.Server.Connz(&server.ConnzOptions{Limit: 1000})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range cz.Conns {
		name, _, _ := strings.Cut(c.Name, " ")
		w.byClient[name] += float64(c.InMsgs)
	}
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "grpc_server_handled_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "grpc_service" && lp.GetValue() == "etcdserverpb.KV" {
					w.etcd += m.GetCounter().GetValue()
				}
			}
		}
	}
	return w
}

// quiet waits until NATS has been almost idle for half a second (the
// consumers caught up), at most 30 s, and returns the work done since from.
func (l *lab) quiet(b *testing.B, from work) work {
	last := l.work(b)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		time.Sleep(500 * time.Millisecond)
		now := l.work(b)
		if now.natsIn-last.natsIn < 50 && now.etcd-last.etcd < 10 {
			break
		}
		last = now
	}
	d := work{natsIn: last.natsIn - from.natsIn, natsOut: last.natsOut - from.natsOut, etcd: last.etcd - from.etcd, byClient: map[string]float64{}, cpu: map[string]float64{}}
	for name, v := range last.byClient {
		d.byClient[name] = v - from.byClient[name]
	}
	for name, v := range last.cpu {
		d.cpu[name] = v - from.cpu[name]
	}
	return d
}

// cpuSeconds is the CPU time (user and system) process pid ("self": this
// one) has used, from /proc/<pid>/stat; 0 when it cannot be read. Linux
// counts it in clock ticks, 100 a second on every platform Go runs on.
func cpuSeconds(pid string) float64 {
	data, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	// The fields after the command name, which may hold spaces: state is
	// the first, utime the 12th and stime the 13th.
	_, rest, ok := strings.Cut(string(data), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100
}

// measure submits n jobs with submit (64 at a time unless told) and waits
// until all are COMPLETED.
// submit returns the job's id and when its submission began.
func (l *lab) measure(b *testing.B, nc *nats.Conn, n int, submit func(i int) (string, time.Time, error), concurrency ...int) runResult {
	limit := 64
	if len(concurrency) > 0 {
		limit = concurrency[0]
	}
	return l.measureWith(b, nc, n, func(record func(id string, t time.Time)) error {
		var g errgroup.Group
		g.SetLimit(limit)
		for i := range n {
			g.Go(func() error {
				id, t, err := submit(i)
				if err == nil {
					record(id, t)
				}
				return err
			})
		}
		return g.Wait()
	})
}

// measureWith runs submitAll, which submits n jobs and records each one's
// id and submit time, and waits until all are COMPLETED.
func (l *lab) measureWith(b *testing.B, nc *nats.Conn, n int, submitAll func(record func(id string, t time.Time)) error) runResult {
	st := newStarts(n)
	subs := l.follow(b, nc, st)
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}()
	before := l.work(b)
	start := time.Now()
	if err := submitAll(func(id string, t time.Time) {
		st.mu.Lock()
		st.submitted[id] = t
		st.mu.Unlock()
	}); err != nil {
		b.Fatal(err)
	}
	submitted := time.Since(start)
	select {
	case <-st.allDone:
	case <-time.After(10 * time.Minute):
		b.Fatalf("%d of %d jobs completed in 10 min", st.completed.Load(), n)
	}
	elapsed := time.Since(start)
	res := runResult{submitRate: float64(n) / submitted.Seconds(), e2e: float64(n) / elapsed.Seconds()}
	res.p50, res.p99 = st.latencies(b)
	b.Logf("%d jobs: %s", n, st.breakdown())
	// What the jobs cost, counted until the platform is quiet again (the
	// mediator may still be recording them), so the next phase starts on
	// an idle platform. This includes the benchmark's own publishes and its
	// subscriptions' deliveries (about 6 per job).
	w := l.quiet(b, before)
	var by []string
	for _, name := range slices.Sorted(maps.Keys(w.byClient)) {
		by = append(by, fmt.Sprintf("%s %.1f", name, w.byClient[name]/float64(n)))
	}
	var cpu []string
	total := 0.0
	for _, name := range slices.Sorted(maps.Keys(w.cpu)) {
		total += w.cpu[name]
		cpu = append(cpu, fmt.Sprintf("%s %.0f", name, w.cpu[name]/float64(n)*1e6))
	}
	res.ops = fmt.Sprintf("per job: %.1f NATS msgs in (%s), %.1f out, %.1f etcd KV requests, %.0f µs CPU (%s; bench: the test's process, NATS, etcd and the clients)",
		w.natsIn/float64(n), strings.Join(by, ", "), w.natsOut/float64(n), w.etcd/float64(n), total/float64(n)*1e6, strings.Join(cpu, ", "))
	return res
}

// follow subscribes s to the live execution and status events.
func (l *lab) follow(b *testing.B, nc *nats.Conn, s *starts) []*nats.Subscription {
	var out []*nats.Subscription
	onCreated := func(m *nats.Msg) {
		ev := &eventsv1.JobCreated{}
		if proto.Unmarshal(m.Data, ev) == nil {
			s.saw(ev.GetJob().GetId(), seenCreated)
		}
	}
	for subj, h := range map[string]nats.MsgHandler{bus.SubjectExecutionAll: s.onExec, bus.SubjectJobStatusAll: s.onStatus, bus.SubjectJobCreated: onCreated} {
		sub, err := nc.Subscribe(subj, h)
		if err != nil {
			b.Fatal(err)
		}
		_ = sub.SetPendingLimits(-1, -1)
		out = append(out, sub)
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	return out
}

// ceiling publishes n messages (async, acked) to a file-backed stream and
// consumes them with a pull consumer, acking each: the rate of both
// together is the most any JetStream pipeline on this server can do.
func ceiling(b *testing.B, js jetstream.JetStream, n int) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH_CEILING", Subjects: []string{"bench.ceiling"}, Storage: jetstream.FileStorage})
	if err != nil {
		b.Fatal(err)
	}
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 200) // about a JobCreated's size
	n *= 4                       // enough to measure
	var got atomic.Int64
	consumed := make(chan struct{})
	cc, err := cons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		if got.Add(1) == int64(n) {
			close(consumed)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Stop()
	start := time.Now()
	for i := range n {
		if _, err := js.PublishAsync("bench.ceiling", payload); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 {
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				b.Fatal(ctx.Err())
			}
		}
	}
	select {
	case <-consumed:
	case <-ctx.Done():
		b.Fatalf("consumed %d of %d", got.Load(), n)
	}
	return float64(n) / time.Since(start).Seconds()
}

// handOff is the floor under each step of a job: one JetStream hand-off on
// this server while it is otherwise quiet, from a publish on one connection
// to the handler of a durable consumer on another (as every step of a job
// goes), n messages 10 ms apart. Both connections are in this process, so
// the wake-up of another process is not counted: a lower bound.
func handOff(b *testing.B, url string, n int) (p50, p99 time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pub, js, err := bus.Connect(url, "bench-handoff-pub")
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	sub, sjs, err := bus.Connect(url, "bench-handoff-sub")
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH_HANDOFF", Subjects: []string{"bench.handoff"}, Storage: jetstream.FileStorage}); err != nil {
		b.Fatal(err)
	}
	defer js.DeleteStream(context.Background(), "BENCH_HANDOFF") //nolint:errcheck // best effort
	cons, err := sjs.CreateConsumer(ctx, "BENCH_HANDOFF", jetstream.ConsumerConfig{Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		b.Fatal(err)
	}
	lat := make(chan time.Duration, n)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		sent, _ := time.Parse(time.RFC3339Nano, string(m.Data()))
		lat <- time.Since(sent)
		_ = m.Ack()
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Stop()
	d := make([]time.Duration, 0, n)
	for range n {
		time.Sleep(10 * time.Millisecond)
		if _, err := js.Publish(ctx, "bench.handoff", []byte(time.Now().Format(time.RFC3339Nano))); err != nil {
			b.Fatal(err)
		}
		select {
		case l := <-lat:
			d = append(d, l)
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		}
	}
	slices.Sort(d)
	return d[n/2], d[n*99/100]
}

// saveProfile writes a 10 s CPU profile of the pprof server at addr to out.
func saveProfile(addr, out string) error {
	resp, err := http.Get("http://" + addr + "/debug/pprof/profile?seconds=10")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Batches of batchSubmit: batchCalls calls of batchSize jobs each in
// flight, so the mediator creates the next jobs while the platform runs the
// ones before.
const (
	batchSize  = 500
	batchCalls = 2
)

// batchSubmit creates n NoOp jobs with BatchCreateJobs, recording each job
// with the time its call began.
func batchSubmit(ctx context.Context, jobs jobsv1.JobServiceClient, n int, record func(string, time.Time)) error {
	var g errgroup.Group
	g.SetLimit(batchCalls)
	for from := 0; from < n; from += batchSize {
		reqs := make([]*jobsv1.CreateJobRequest, min(batchSize, n-from))
		for i := range reqs {
			reqs[i] = &jobsv1.CreateJobRequest{Job: &jobsv1.Job{Profile: "NoOp"}}
		}
		g.Go(func() error {
			t := time.Now()
			resp, err := jobs.BatchCreateJobs(ctx, &jobsv1.BatchCreateJobsRequest{Requests: reqs})
			if err != nil {
				return fmt.Errorf("batch create: %w", err)
			}
			for i, r := range resp.GetResults() {
				if r.GetJob() == nil {
					return fmt.Errorf("requests[%d] of a batch not created: %v", i, r.GetError())
				}
				record(r.GetJob().GetId(), t)
			}
			return nil
		})
	}
	return g.Wait()
}

// peakRSS lists each service process's peak resident memory (VmHWM).
func peakRSS(l *lab) string {
	var out []string
	for _, p := range l.stack.Processes() {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				out = append(out, p.Name+" "+strings.TrimSpace(v))
			}
		}
	}
	return strings.Join(out, ", ")
}
