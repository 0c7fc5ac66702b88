package main_test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/devstack"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// lab is a running dev stack for lifecycle tests: several workers, quick
// liveness settings, and the gRPC job and registry APIs.
type lab struct {
	stack    *devstack.Stack
	dir      string
	media    string
	jobs     jobsv1.JobServiceClient
	registry registryv1.RegistryServiceClient
}

// startLab runs the four binaries with cfg's counts and extra args.
func startLab(t testing.TB, cfg devstack.Config) *lab {
	t.Helper()
	bin := devstack.BuildBinaries(t)
	dir := t.TempDir()
	media := filepath.Join(dir, "media")
	if err := os.MkdirAll(media, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.Dir, cfg.BinDir, cfg.APIKey = filepath.Join(dir, "stack"), bin, apiKey
	cfg.FileRoots = []string{media}
	stack := devstack.StartForTest(t, cfg)
	cc, err := grpcx.Dial(stack.GRPCAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	rc, err := grpcx.Dial(stack.RegistryAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	return &lab{stack: stack, dir: dir, media: media, jobs: jobsv1.NewJobServiceClient(cc), registry: registryv1.NewRegistryServiceClient(rc)}
}

func authed(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+apiKey)
}

func (l *lab) create(t testing.TB, job *jobsv1.Job) *jobsv1.Job {
	t.Helper()
	got, err := l.jobs.CreateJob(authed(context.Background()), &jobsv1.CreateJobRequest{Job: job})
	if err != nil {
		t.Fatalf("create %s job: %v", job.GetProfile(), err)
	}
	return got
}

// sleepJob is a job of the worker's diagnostic Sleep profile.
func sleepJob(seconds float64) *jobsv1.Job {
	return &jobsv1.Job{Profile: "Sleep", Input: &jobsv1.JobInput{Parameters: &structpb.Struct{
		Fields: map[string]*structpb.Value{"seconds": structpb.NewNumberValue(seconds)}}}}
}

// longTool returns a job whose tool runs far longer than any subtest:
// MeasureLoudness of 10 hours of silence, which keeps ffmpeg's ebur128
// busy for over a minute of CPU. (The built-in profiles open nothing but
// their input, a regular file, so a tool cannot be made to hang on a file
// the input names.) The input's path identifies the ffmpeg process.
func (l *lab) longTool(t testing.TB, name string) (*jobsv1.Job, string) {
	t.Helper()
	silence := filepath.Join(l.dir, "silence.flac") // made once per lab: 5 s
	if _, err := os.Stat(silence); err != nil {
		if b, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono",
			"-t", "36000", "-c:a", "flac", silence).CombinedOutput(); err != nil {
			t.Fatalf("ffmpeg silence: %v: %s", err, b)
		}
	}
	dir := filepath.Join(l.media, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(dir, "long.flac")
	if err := os.Link(silence, in); err != nil {
		t.Fatal(err)
	}
	return &jobsv1.Job{Profile: "MeasureLoudness",
		Input: &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{"inputFile": {Url: "file://" + in}}}}, in
}

// toolRunning reports whether an ffmpeg or ffprobe process reads file.
func toolRunning(file string) bool { return readers(file, "ffmpeg", "ffprobe") > 0 }

// ffmpegs counts the ffmpeg processes reading file (not the ffprobe run
// before them).
func ffmpegs(file string) int { return readers(file, "ffmpeg") }

// readers counts the processes of the named tools that read file: naming it
// on their command line, or holding it open. A worker runs its tools under
// a job's tenant roots on a link to the file as it opened it, so the path
// on their command line is the link's.
func readers(file string, tools ...string) int {
	n := 0
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		b, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if !slices.Contains(tools, filepath.Base(args[0])) {
			continue
		}
		if slices.Contains(args, file) || holds(p, file) {
			n++
		}
	}
	return n
}

// holds reports whether the process at /proc/<pid> has file open.
func holds(proc, file string) bool {
	fds, _ := filepath.Glob(filepath.Join(proc, "fd", "*"))
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && target == file {
			return true
		}
	}
	return false
}

// waitJob polls job id until cond holds (at most within).
func (l *lab) waitJob(t testing.TB, id, what string, within time.Duration, cond func(*jobsv1.Job) bool) *jobsv1.Job {
	t.Helper()
	deadline := time.Now().Add(within)
	var last *jobsv1.Job
	for {
		job, err := l.jobs.GetJob(authed(context.Background()), &jobsv1.GetJobRequest{Id: id})
		if err == nil {
			last = job
			if cond(job) {
				return job
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: not %s within %s; last: %v (err %v)", id, what, within, last, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func is(st jobsv1.JobStatus) func(*jobsv1.Job) bool {
	return func(j *jobsv1.Job) bool { return j.GetStatus() == st }
}

// runningAs: the job runs its attempt-th attempt.
func runningAs(attempt int32) func(*jobsv1.Job) bool {
	return func(j *jobsv1.Job) bool {
		ex := j.GetExecutions()
		return j.GetStatus() == jobsv1.JobStatus_JOB_STATUS_RUNNING && len(ex) > 0 && ex[len(ex)-1].GetAttempt() == attempt
	}
}

// workerOf is the worker process of the dev stack that runs instance.
func (l *lab) workerOf(t testing.TB, instance string) *devstack.Process {
	t.Helper()
	p := l.stack.Process(strings.Replace(instance, "dev-worker-", "job-worker-", 1))
	if p == nil {
		t.Fatalf("no process runs instance %q", instance)
	}
	return p
}

func (l *lab) executions(t testing.TB, id string) []*jobsv1.Execution {
	t.Helper()
	resp, err := l.jobs.ListJobExecutions(authed(context.Background()), &jobsv1.ListJobExecutionsRequest{Id: id})
	if err != nil {
		t.Fatalf("executions of %s: %v", id, err)
	}
	return resp.GetExecutions()
}

// waitGone waits until no process has arg on its command line.
func waitGone(t testing.TB, arg string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for toolRunning(arg) {
		if time.Since(start) > within {
			t.Fatalf("tool process on %s still running %s later", arg, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func TestJobLifecycle(t *testing.T) {
	l := startLab(t, devstack.Config{
		Workers: 2,
		Args: map[string][]string{
			"job-processor": {"--queue-timeout", "3s", "--heartbeat-timeout", "3s", "--retry-backoff", "500ms"},
			"job-worker":    {"--capacity", "2"},
		},
	})
	ctx := authed(context.Background())

	t.Run("no candidate fails after the queue timeout", func(t *testing.T) {
		if _, err := l.registry.PutJobProfile(context.Background(), &registryv1.PutJobProfileRequest{Profile: &registryv1.JobProfile{
			Name: "Orphan", JobType: "QAJob"}}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		job := l.create(t, &jobsv1.Job{Profile: "Orphan"})
		done := l.waitJob(t, job.GetId(), "FAILED", 30*time.Second, is(jobsv1.JobStatus_JOB_STATUS_FAILED))
		if done.GetError().GetType() != problem.TypePrefix+"no-service" || !strings.Contains(done.GetError().GetDetail(), `"Orphan"`) {
			t.Fatalf("problem = %v", done.GetError())
		}
		if waited := time.Since(start); waited < 3*time.Second {
			t.Fatalf("failed after %s, before the 3s queue timeout", waited)
		}
	})

	t.Run("cancel while running kills the tool", func(t *testing.T) {
		in, long := l.longTool(t, "cancel")
		job := l.create(t, in)
		l.waitJob(t, job.GetId(), "RUNNING", 30*time.Second, is(jobsv1.JobStatus_JOB_STATUS_RUNNING))
		waitFor(t, "ffmpeg started", func() bool { return ffmpegs(long) == 1 })
		start := time.Now()
		if _, err := l.jobs.CancelJob(ctx, &jobsv1.CancelJobRequest{Id: job.GetId()}); err != nil {
			t.Fatal(err)
		}
		gone := waitGone(t, long, 10*time.Second)
		l.waitJob(t, job.GetId(), "CANCELED", 10*time.Second, is(jobsv1.JobStatus_JOB_STATUS_CANCELED))
		t.Logf("cancel: ffmpeg gone %s after the request, job CANCELED after %s", gone.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		_, err := l.jobs.CancelJob(ctx, &jobsv1.CancelJobRequest{Id: job.GetId()})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("cancel of a canceled job: %v, want FailedPrecondition", err)
		}
	})

	t.Run("timeout stops the tool and fails the job", func(t *testing.T) {
		in, long := l.longTool(t, "timeout")
		in.Timeout = durationpb.New(1500 * time.Millisecond)
		job := l.create(t, in)
		done := l.waitJob(t, job.GetId(), "FAILED", 30*time.Second, is(jobsv1.JobStatus_JOB_STATUS_FAILED))
		if done.GetError().GetType() != problem.TypePrefix+"job-timeout-passed" {
			t.Fatalf("problem = %v", done.GetError())
		}
		waitGone(t, long, 10*time.Second)
	})

	t.Run("deadline stops the tool and fails the job", func(t *testing.T) {
		in, long := l.longTool(t, "deadline")
		in.Deadline = timestamppb.New(time.Now().Add(2 * time.Second))
		job := l.create(t, in)
		done := l.waitJob(t, job.GetId(), "FAILED", 30*time.Second, is(jobsv1.JobStatus_JOB_STATUS_FAILED))
		if done.GetError().GetType() != problem.TypePrefix+"job-deadline-passed" {
			t.Fatalf("problem = %v", done.GetError())
		}
		waitGone(t, long, 10*time.Second)
	})

	t.Run("restart of a canceled job runs a new execution (REST)", func(t *testing.T) {
		job := l.create(t, sleepJob(30))
		l.waitJob(t, job.GetId(), "RUNNING", 30*time.Second, is(jobsv1.JobStatus_JOB_STATUS_RUNNING))
		p := &platform{stack: l.stack}
		if code, body := p.rest(t, "POST", "/v1/jobs/"+job.GetId()+":restart", apiKey, "{}"); code != http.StatusConflict {
			t.Fatalf("restart of a running job: %d %s, want 409", code, body)
		}
		if code, body := p.rest(t, "POST", "/v1/jobs/"+job.GetId()+":cancel", apiKey, "{}"); code != http.StatusOK {
			t.Fatalf("cancel: %d %s", code, body)
		}
		l.waitJob(t, job.GetId(), "CANCELED", 10*time.Second, is(jobsv1.JobStatus_JOB_STATUS_CANCELED))
		if code, body := p.rest(t, "POST", "/v1/jobs/"+job.GetId()+":restart", apiKey, "{}"); code != http.StatusOK {
			t.Fatalf("restart: %d %s", code, body)
		}
		l.waitJob(t, job.GetId(), "RUNNING again", 30*time.Second, func(j *jobsv1.Job) bool {
			return j.GetStatus() == jobsv1.JobStatus_JOB_STATUS_RUNNING && len(j.GetExecutions()) == 2
		})
		code, body := p.rest(t, "GET", "/v1/jobs/"+job.GetId()+"/executions", apiKey, "")
		if code != http.StatusOK {
			t.Fatalf("executions: %d %s", code, body)
		}
		var resp struct {
			Executions []struct {
				Attempt int    `json:"attempt"`
				Status  string `json:"status"`
			} `json:"executions"`
		}
		mustJSON(t, body, &resp)
		if len(resp.Executions) != 2 || resp.Executions[0].Status != "JOB_STATUS_CANCELED" || resp.Executions[1].Attempt != 2 ||
			resp.Executions[1].Status != "JOB_STATUS_RUNNING" {
			t.Fatalf("executions = %s", body)
		}
		if code, _ := p.rest(t, "GET", "/v1/jobs/"+job.GetId()+"/executions", "mk_wrong_key", ""); code != http.StatusUnauthorized {
			t.Fatalf("executions with a wrong key: %d, want 401", code)
		}
		// The restarted run is canceled for real: the job ends CANCELED,
		// and so does its attempt 2.
		if _, err := l.jobs.CancelJob(ctx, &jobsv1.CancelJobRequest{Id: job.GetId()}); err != nil {
			t.Fatal(err)
		}
		l.waitJob(t, job.GetId(), "CANCELED again", 10*time.Second, is(jobsv1.JobStatus_JOB_STATUS_CANCELED))
		if ex := l.executions(t, job.GetId()); len(ex) != 2 || ex[1].GetStatus() != jobsv1.JobStatus_JOB_STATUS_CANCELED {
			t.Fatalf("executions after the second cancel = %v, want attempt 2 CANCELED", ex)
		}
		// A cancel sent right after a restart, which may reach the
		// processor before the restart does, cancels the run it follows.
		if _, err := l.jobs.RestartJob(ctx, &jobsv1.RestartJobRequest{Id: job.GetId()}); err != nil {
			t.Fatal(err)
		}
		if _, err := l.jobs.CancelJob(ctx, &jobsv1.CancelJobRequest{Id: job.GetId()}); err != nil {
			t.Fatal(err)
		}
		l.waitJob(t, job.GetId(), "CANCELED after restart and cancel", 10*time.Second, func(j *jobsv1.Job) bool {
			ex := j.GetExecutions()
			return j.GetStatus() == jobsv1.JobStatus_JOB_STATUS_CANCELED && len(ex) > 0 && ex[len(ex)-1].GetAttempt() == 3
		})
		if ex := l.executions(t, job.GetId()); len(ex) != 3 || ex[2].GetStatus() != jobsv1.JobStatus_JOB_STATUS_CANCELED {
			t.Fatalf("executions after restart and cancel = %v, want attempt 3 CANCELED", ex)
		}
	})

	t.Run("a killed worker's job completes on another instance", func(t *testing.T) {
		job := l.create(t, sleepJob(4))
		l.waitJob(t, job.GetId(), "RUNNING", 30*time.Second, is(jobsv1.JobStatus_JOB_STATUS_RUNNING))
		first := l.executions(t, job.GetId())[0]
		victim := l.workerOf(t, first.GetInstanceId())
		killed := time.Now()
		victim.Kill()
		t.Cleanup(func() { _ = victim.Restart(context.Background()) })
		l.waitJob(t, job.GetId(), "RUNNING as attempt 2", 30*time.Second, runningAs(2))
		rerun := time.Since(killed)
		done := l.waitJob(t, job.GetId(), "COMPLETED", 30*time.Second, is(jobsv1.JobStatus_JOB_STATUS_COMPLETED))
		// The job record too, not only the processor's executions: the lost
		// attempt ended, it does not stay RUNNING there.
		if ex := done.GetExecutions(); len(ex) != 2 || ex[0].GetStatus() != jobsv1.JobStatus_JOB_STATUS_FAILED ||
			ex[0].GetError().GetType() != problem.TypePrefix+"worker-lost" {
			t.Errorf("job record's executions = %v, want attempt 1 FAILED worker-lost, then attempt 2", ex)
		}
		t.Logf("worker %s killed: attempt 2 running after %s, job COMPLETED after %s", first.GetInstanceId(),
			rerun.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
		ex := l.executions(t, job.GetId())
		if len(ex) != 2 {
			t.Fatalf("%d executions, want 2: %v", len(ex), ex)
		}
		if ex[0].GetStatus() != jobsv1.JobStatus_JOB_STATUS_FAILED || ex[0].GetError().GetType() != problem.TypePrefix+"worker-lost" {
			t.Errorf("attempt 1 = %v, want FAILED worker-lost", ex[0])
		}
		if ex[1].GetStatus() != jobsv1.JobStatus_JOB_STATUS_COMPLETED || ex[1].GetInstanceId() == first.GetInstanceId() || ex[1].GetInstanceId() == "" {
			t.Errorf("attempt 2 = %v, want COMPLETED on another instance than %s", ex[1], first.GetInstanceId())
		}
	})

	// A worker frozen past the heartbeat window (a long GC pause, a VM or
	// network stall) is counted lost and its job runs again elsewhere; when
	// it wakes, its run of the lost attempt is stopped, tool and all, and
	// the retry goes on: never two runs of the job at once for long.
	t.Run("a frozen worker's lost attempt is stopped when it wakes", func(t *testing.T) {
		in, long := l.longTool(t, "frozen")
		job := l.create(t, in)
		l.waitJob(t, job.GetId(), "RUNNING", 30*time.Second, is(jobsv1.JobStatus_JOB_STATUS_RUNNING))
		waitFor(t, "ffmpeg started", func() bool { return ffmpegs(long) == 1 })
		first := l.executions(t, job.GetId())[0]
		frozen := l.workerOf(t, first.GetInstanceId())
		if err := frozen.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = frozen.Signal(syscall.SIGCONT) })
		l.waitJob(t, job.GetId(), "RUNNING as attempt 2", 30*time.Second, runningAs(2))
		waitFor(t, "attempt 2's ffmpeg started beside the frozen one", func() bool { return ffmpegs(long) == 2 })
		woke := time.Now()
		if err := frozen.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the woken worker's ffmpeg stopped", func() bool { return ffmpegs(long) == 1 })
		t.Logf("worker %s woke: its lost attempt's tool gone %s later", first.GetInstanceId(), time.Since(woke).Round(time.Millisecond))
		if j, err := l.jobs.GetJob(ctx, &jobsv1.GetJobRequest{Id: job.GetId()}); err != nil || j.GetStatus() != jobsv1.JobStatus_JOB_STATUS_RUNNING {
			t.Fatalf("job after the stop = %v (%v), want attempt 2 still RUNNING", j, err)
		}
		if ex := l.executions(t, job.GetId()); len(ex) != 2 || ex[1].GetStatus() != jobsv1.JobStatus_JOB_STATUS_RUNNING || ex[1].GetInstanceId() == first.GetInstanceId() {
			t.Fatalf("executions = %v, want attempt 2 running on another instance", ex)
		}
		if _, err := l.jobs.CancelJob(ctx, &jobsv1.CancelJobRequest{Id: job.GetId()}); err != nil {
			t.Fatal(err)
		}
		waitGone(t, long, 10*time.Second)
		l.waitJob(t, job.GetId(), "CANCELED", 10*time.Second, is(jobsv1.JobStatus_JOB_STATUS_CANCELED))
	})
}

// waitFor polls cond for up to 30 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
