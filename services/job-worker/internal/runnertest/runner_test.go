package runnertest_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/testmedia"
	"github.com/medius-platform/medius/pkg/workersdk"
	"github.com/medius-platform/medius/pkg/workersdk/workersdktest"
	"github.com/medius-platform/medius/services/job-worker/internal/profiles"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

const service = "test-worker"

// slow is a test profile that runs a real ffmpeg encoding a minute of test
// pattern in real time, so it only ends when stopped. It reports progress 50
// and publishes the ffmpeg pid on pids.
type slow struct {
	pids  chan int
	calls atomic.Int32
	// finishAfter, when set, makes calls after the first return at once.
	finishAfter bool
}

func (s *slow) profile() workersdk.Profile {
	return workersdk.Profile{
		Spec: &registryv1.JobProfile{Name: "Slow", JobType: "AmeJob"},
		Handler: func(ctx context.Context, _ *workersdk.WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error) {
			if n := s.calls.Add(1); s.finishAfter && n > 1 {
				return &jobsv1.JobOutput{}, 1, nil
			}
			cmd := exec.CommandContext(ctx, "ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
				"-f", "lavfi", "-i", "testsrc=duration=60:size=64x64:rate=5", "-f", "null", "-")
			if err := cmd.Start(); err != nil {
				return nil, 0, err
			}
			s.pids <- cmd.Process.Pid
			progress(50)
			err := cmd.Wait()
			if ctx.Err() != nil {
				return nil, 0, context.Cause(ctx)
			}
			return nil, 0, workersdk.ToolError("ffmpeg", err, nil)
		},
	}
}

// env is a real NATS with the streams provisioned, a file root holding a
// real clip, and a recorder of every execution update.
type env struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	root    string
	clip    string
	slow    *slow
	updates *recorder
}

var (
	clipOnce sync.Once
	clipDir  string
	clipPath string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if clipDir != "" {
		_ = os.RemoveAll(clipDir)
	}
	os.Exit(code)
}

func setup(t *testing.T) *env {
	t.Helper()
	clipOnce.Do(func() {
		d, err := os.MkdirTemp("", "medius-worker-test-")
		if err != nil {
			t.Fatal(err)
		}
		clipDir = d
		clipPath = testmedia.Clip(t, d)
	})
	if clipPath == "" {
		t.Fatal("no test clip")
	}
	n, err := devenv.StartNATS(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	nc, js, err := bus.Connect(n.URL, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := bus.Provision(ctx, js); err != nil {
		t.Fatal(err)
	}
	e := &env{nc: nc, js: js, root: clipDir, clip: clipPath, slow: &slow{pids: make(chan int, 10)}, updates: &recorder{}}
	sub, err := nc.Subscribe(bus.SubjectExecutionAll, func(m *nats.Msg) {
		u := &eventsv1.ExecutionUpdate{}
		if err := bus.Decode(m.Data, u); err != nil {
			t.Errorf("undecodable update: %v", err)
			return
		}
		e.updates.add(u)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return e
}

// start runs a runner until the test ends (or the returned stop is called,
// which waits for Run to return).
func (e *env) start(t *testing.T, mod func(*workersdk.Config)) (stop func()) {
	t.Helper()
	cfg := workersdk.Config{
		JS: e.js, NC: e.nc, Service: service, InstanceID: "inst-a", Capacity: 2,
		Profiles:     append(profiles.Builtin(&locator.Resolver{Roots: []string{e.root}}), e.slow.profile()),
		FetchWait:    200 * time.Millisecond,
		DrainTimeout: 5 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	return workersdktest.Run(t, cfg)
}

func (e *env) submit(t *testing.T, job, profile, url string, mod ...func(*eventsv1.WorkItem)) {
	t.Helper()
	item := &eventsv1.WorkItem{JobId: job, Tenant: "t1", Attempt: 1, Profile: profile, JobType: "AmeJob", Service: service,
		Input: &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{profiles.ParamInputFile: {Url: url}}}}
	for _, m := range mod {
		m(item)
	}
	if err := bus.Publish(t.Context(), e.js, bus.SubjectWork(service, job), "work-"+job+"-1", item); err != nil {
		t.Fatal(err)
	}
}

// recorder keeps execution updates in arrival order.
type recorder struct {
	mu  sync.Mutex
	all []*eventsv1.ExecutionUpdate
}

func (r *recorder) add(u *eventsv1.ExecutionUpdate) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all = append(r.all, u)
}

func (r *recorder) of(job string) []*eventsv1.ExecutionUpdate {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*eventsv1.ExecutionUpdate
	for _, u := range r.all {
		if u.GetJobId() == job {
			out = append(out, u)
		}
	}
	return out
}

// waitFor polls until an update of job satisfies ok and returns it.
func (e *env) waitFor(t *testing.T, job string, what string, ok func(*eventsv1.ExecutionUpdate) bool) *eventsv1.ExecutionUpdate {
	t.Helper()
	var found *eventsv1.ExecutionUpdate
	checkFor(t, 20*time.Second, func() bool {
		for _, u := range e.updates.of(job) {
			if ok(u) {
				found = u
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("job %s: no update %s; got %v", job, what, e.updates.of(job)) })
	return found
}

func (e *env) waitStatus(t *testing.T, job string, s jobsv1.JobStatus) *eventsv1.ExecutionUpdate {
	t.Helper()
	return e.waitFor(t, job, s.String(), func(u *eventsv1.ExecutionUpdate) bool { return u.GetStatus() == s })
}

// checkFor polls cond every 20ms until it holds or timeout passes; msg
// explains the failure (evaluated then, to show the latest state).
func checkFor(t *testing.T, timeout time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// workLeft is the number of work items still in the stream (acked items of a
// work-queue stream are removed).
func (e *env) workLeft(t *testing.T) uint64 {
	t.Helper()
	s, err := e.js.Stream(t.Context(), bus.StreamWork)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

const (
	running   = jobsv1.JobStatus_JOB_STATUS_RUNNING
	completed = jobsv1.JobStatus_JOB_STATUS_COMPLETED
	failed    = jobsv1.JobStatus_JOB_STATUS_FAILED
	canceled  = jobsv1.JobStatus_JOB_STATUS_CANCELED
)

func TestCompleted(t *testing.T) {
	e := setup(t)
	e.start(t, nil)
	e.submit(t, "job1", profiles.ExtractTechnicalMetadata, "file://"+e.clip)

	done := e.waitStatus(t, "job1", completed)
	ups := e.updates.of("job1")
	// A probe done within the running delay is reported by its COMPLETED
	// alone, which then says when it started.
	if first := ups[0]; first.GetStatus() != running && (len(ups) != 1 || !first.GetStartTime().IsValid()) {
		t.Errorf("updates %v, want RUNNING first, or COMPLETED alone with its start time", ups)
	}
	for _, u := range ups {
		if u.GetInstanceId() != "inst-a" || u.GetService() != service || u.GetAttempt() != 1 {
			t.Errorf("update %v lacks instance/service/attempt", u)
		}
	}
	if math.Abs(done.GetVerifiedQuantity()-3) > 0.2 {
		t.Errorf("verified quantity = %v, want about 3", done.GetVerifiedQuantity())
	}
	tm := done.GetOutput().GetData().GetFields()[profiles.ParamTechnicalMetadata].GetStructValue().AsMap()
	if d, _ := tm["format"].(map[string]any)["duration"].(float64); math.Abs(d-3) > 0.2 {
		t.Errorf("output duration = %v, want about 3 (output %v)", d, tm)
	}
	checkFor(t, 5*time.Second, func() bool { return e.workLeft(t) == 0 }, func() string { return "work item not acked" })
}

func TestFailures(t *testing.T) {
	e := setup(t)
	e.start(t, nil)
	missing := "file://" + filepath.Join(e.root, "missing.mp4")
	tests := []struct {
		job, profile, url string
		typ, field, msg   string
	}{
		{"missing", profiles.ExtractTechnicalMetadata, missing, "input-not-found", "input.locators.inputFile", missing},
		{"escape", profiles.ExtractTechnicalMetadata, "file://" + e.root + "/../etc/passwd", "locator-forbidden", "input.locators.inputFile", "inputFile"},
		{"outside", profiles.ExtractTechnicalMetadata, "file:///etc/passwd", "locator-forbidden", "input.locators.inputFile", "outside the allowed roots"},
		{"unknown", "NoSuchProfile", "file://" + e.clip, "unsupported-profile", "profile", "NoSuchProfile"},
	}
	for _, tt := range tests {
		e.submit(t, tt.job, tt.profile, tt.url)
	}
	for _, tt := range tests {
		t.Run(tt.job, func(t *testing.T) {
			u := e.waitStatus(t, tt.job, failed)
			p := u.GetError()
			if p.GetType() != "urn:medius:problem:"+tt.typ || p.GetField() != tt.field || !strings.Contains(p.GetDetail(), tt.msg) {
				t.Errorf("problem = %v, want type %s, field %s, detail naming %q", p, tt.typ, tt.field, tt.msg)
			}
		})
	}
	checkFor(t, 5*time.Second, func() bool { return e.workLeft(t) == 0 }, func() string { return "failed work items not acked" })
}

func TestCancel(t *testing.T) {
	e := setup(t)
	e.start(t, nil)
	e.submit(t, "job-c", "Slow", "")
	pid := <-e.slow.pids
	// Progress arrives while it runs.
	e.waitFor(t, "job-c", "with progress 50", func(u *eventsv1.ExecutionUpdate) bool {
		return u.GetStatus() == running && u.GetProgress() == 50
	})

	if err := bus.PublishCore(t.Context(), e.nc, bus.SubjectCancel("job-c"), &eventsv1.JobCancelRequested{JobId: "job-c", Tenant: "t1"}); err != nil {
		t.Fatal(err)
	}
	e.waitStatus(t, "job-c", canceled)
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("ffmpeg pid %d still exists after cancel (kill 0: %v)", pid, err)
	}
	checkFor(t, 5*time.Second, func() bool { return e.workLeft(t) == 0 }, func() string { return "canceled work item not acked" })
}

func TestTimeout(t *testing.T) {
	e := setup(t)
	e.start(t, nil)
	e.submit(t, "job-t", "Slow", "", func(w *eventsv1.WorkItem) { w.Timeout = durationpb.New(300 * time.Millisecond) })
	<-e.slow.pids
	u := e.waitStatus(t, "job-t", failed)
	if u.GetError().GetType() != "urn:medius:problem:timeout" {
		t.Errorf("problem = %v, want timeout", u.GetError())
	}
}

// TestBackPressure: a runner of capacity 1 does not take a second item while
// its one slot is busy.
func TestBackPressure(t *testing.T) {
	e := setup(t)
	e.start(t, func(c *workersdk.Config) { c.Capacity = 1 })
	e.submit(t, "first", "Slow", "")
	<-e.slow.pids
	e.waitStatus(t, "first", running)
	e.submit(t, "second", profiles.ExtractTechnicalMetadata, "file://"+e.clip)
	// Give a free slot ample time to have taken it (several fetch waits).
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if ups := e.updates.of("second"); len(ups) > 0 {
			t.Fatalf("second job started while the only slot was busy: %v", ups)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := bus.PublishCore(t.Context(), e.nc, bus.SubjectCancel("first"), &eventsv1.JobCancelRequested{JobId: "first"}); err != nil {
		t.Fatal(err)
	}
	e.waitStatus(t, "first", canceled)
	e.waitStatus(t, "second", completed)
}

// TestKeepsItemPastAckWait: a job longer than the ack wait stays with its
// worker (InProgress) instead of being redelivered to another one.
func TestKeepsItemPastAckWait(t *testing.T) {
	e := setup(t)
	ackWait := func(c *workersdk.Config) { c.AckWait = 600 * time.Millisecond }
	e.start(t, ackWait)
	e.start(t, func(c *workersdk.Config) { ackWait(c); c.InstanceID = "inst-b" })
	e.submit(t, "long", "Slow", "")
	<-e.slow.pids
	time.Sleep(2 * time.Second) // the property under test is "nothing happens for a while"
	if n := e.slow.calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1 (item redelivered while in progress)", n)
	}
	if err := bus.PublishCore(t.Context(), e.nc, bus.SubjectCancel("long"), &eventsv1.JobCancelRequested{JobId: "long"}); err != nil {
		t.Fatal(err)
	}
	e.waitStatus(t, "long", canceled)
}

// TestShutdownHandsBack: a job still running when the drain timeout ends is
// stopped and its item handed back, and another instance completes it.
func TestShutdownHandsBack(t *testing.T) {
	e := setup(t)
	e.slow.finishAfter = true
	stopA := e.start(t, func(c *workersdk.Config) { c.DrainTimeout = 300 * time.Millisecond })
	e.submit(t, "handed", "Slow", "")
	pid := <-e.slow.pids
	e.waitStatus(t, "handed", running)

	stopA() // returns once the job is stopped and naked
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("ffmpeg pid %d survived shutdown (kill 0: %v)", pid, err)
	}
	for _, u := range e.updates.of("handed") {
		if u.GetStatus() != running {
			t.Fatalf("instance A reported %v for a job it handed back", u.GetStatus())
		}
	}
	e.start(t, func(c *workersdk.Config) { c.InstanceID = "inst-b" })
	u := e.waitStatus(t, "handed", completed)
	if u.GetInstanceId() != "inst-b" {
		t.Errorf("completed by %q, want inst-b", u.GetInstanceId())
	}
}

// TestBadPayloadTerminated: an undecodable item is dropped, not retried, and
// does not block the next one.
func TestBadPayloadTerminated(t *testing.T) {
	e := setup(t)
	e.start(t, func(c *workersdk.Config) { c.Capacity = 1 })
	if _, err := e.js.Publish(t.Context(), bus.SubjectWork(service, "garbage"), []byte{0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	e.submit(t, "after", profiles.ExtractTechnicalMetadata, "file://"+e.clip)
	e.waitStatus(t, "after", completed)
	checkFor(t, 5*time.Second, func() bool { return e.workLeft(t) == 0 }, func() string { return "bad item not terminated" })
}

func TestSleepHeartbeatsAndQuantity(t *testing.T) {
	e := setup(t)
	e.start(t, func(c *workersdk.Config) { c.HeartbeatInterval = 100 * time.Millisecond })
	e.submit(t, "job-s", profiles.Sleep, "", func(w *eventsv1.WorkItem) {
		w.JobType = "QAJob"
		w.Input.Parameters, _ = structpb.NewStruct(map[string]any{profiles.ParamSeconds: 0.6})
	})
	done := e.waitStatus(t, "job-s", completed)
	if done.GetVerifiedQuantity() != 0.6 {
		t.Errorf("verified quantity = %v, want 0.6", done.GetVerifiedQuantity())
	}
	var beats int
	for _, u := range e.updates.of("job-s") {
		if u.GetStatus() == running && u.GetMessage() == "heartbeat" {
			beats++
		}
	}
	if beats < 2 {
		t.Errorf("%d heartbeats during a 0.6s job with a 100ms interval, want several", beats)
	}

	e.submit(t, "job-n", profiles.NoOp, "")
	if n := e.waitStatus(t, "job-n", completed); len(n.GetOutput().GetData().GetFields()) != 0 {
		t.Errorf("NoOp output = %v, want empty", n.GetOutput())
	}
	e.submit(t, "job-bad", profiles.Sleep, "", func(w *eventsv1.WorkItem) {
		w.Input.Parameters, _ = structpb.NewStruct(map[string]any{profiles.ParamSeconds: "ten"})
	})
	if f := e.waitStatus(t, "job-bad", failed); f.GetError().GetType() != "urn:medius:problem:"+workersdk.TypeInvalidInput {
		t.Errorf("Sleep with a string: problem %v, want %s", f.GetError(), workersdk.TypeInvalidInput)
	}
}

func TestSleepCanceled(t *testing.T) {
	e := setup(t)
	e.start(t, nil)
	e.submit(t, "job-sc", profiles.Sleep, "", func(w *eventsv1.WorkItem) {
		w.Input.Parameters, _ = structpb.NewStruct(map[string]any{profiles.ParamSeconds: 60})
	})
	e.waitStatus(t, "job-sc", running)
	start := time.Now()
	if err := bus.PublishCore(t.Context(), e.nc, bus.SubjectCancel("job-sc"), &eventsv1.JobCancelRequested{JobId: "job-sc", Tenant: "t1"}); err != nil {
		t.Fatal(err)
	}
	e.waitStatus(t, "job-sc", canceled)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v", d)
	}
}

// An item redelivered to another instance reports again: the instance is in
// the msg id, so JetStream does not drop its updates as duplicates.
func TestMsgIDNamesInstance(t *testing.T) {
	u := &eventsv1.ExecutionUpdate{JobId: "j1", Attempt: 2, InstanceId: "inst-b", Status: running}
	if got, want := workersdk.MsgID(u, "-40"), "exec-j1-2-inst-b-RUNNING-40"; got != want {
		t.Errorf("MsgID = %q, want %q", got, want)
	}
	e := setup(t)
	e.submit(t, "job-r", profiles.NoOp, "")
	stopA := e.start(t, func(c *workersdk.Config) { c.InstanceID = "inst-a" })
	e.waitStatus(t, "job-r", completed)
	stopA()
	// The same work item again (as a redelivery would bring it) on inst-b.
	if err := bus.Publish(t.Context(), e.js, bus.SubjectWork(service, "job-r"), "work-job-r-again", &eventsv1.WorkItem{
		JobId: "job-r", Tenant: "t1", Attempt: 1, Profile: profiles.NoOp, Service: service}); err != nil {
		t.Fatal(err)
	}
	e.start(t, func(c *workersdk.Config) { c.InstanceID = "inst-b" })
	e.waitFor(t, "job-r", "COMPLETED from inst-b", func(u *eventsv1.ExecutionUpdate) bool {
		return u.GetStatus() == completed && u.GetInstanceId() == "inst-b"
	})
}

// Bad media fails its job with a clear problem; the worker carries on.
func TestBadMediaThenNextJob(t *testing.T) {
	e := setup(t)
	notMedia := filepath.Join(t.TempDir(), "notes.mp4")
	if err := os.WriteFile(notMedia, []byte("not media"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(notMedia)
	e.start(t, func(c *workersdk.Config) {
		c.InstanceID, c.Capacity = "inst-bad", 1
		c.Profiles = profiles.Builtin(&locator.Resolver{Roots: []string{e.root, root}})
	})
	e.submit(t, "job-bad-media", profiles.CreateProxy, "file://"+notMedia, func(w *eventsv1.WorkItem) {
		w.Input.Locators[profiles.ParamOutputLocation] = &jobsv1.Locator{Url: "file://" + root + "/out"}
	})
	f := e.waitStatus(t, "job-bad-media", failed)
	if f.GetError().GetType() != "urn:medius:problem:"+workersdk.TypeInvalidInput || !strings.Contains(f.GetError().GetDetail(), "not readable media") {
		t.Errorf("problem = %v, want invalid-input saying the input is not readable media", f.GetError())
	}
	e.submit(t, "job-after", profiles.ExtractTechnicalMetadata, "file://"+e.clip)
	e.waitStatus(t, "job-after", completed)
}
