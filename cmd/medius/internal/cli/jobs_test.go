package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/devstack"
	"github.com/medius-platform/medius/pkg/grpcx"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const testAPIKey = "mk_cli_test_key"

// TestJobs runs the `medius jobs` commands against one real dev stack.
func TestJobs(t *testing.T) {
	for _, tool := range []string{"ffmpeg", "ffprobe"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install Debian package ffmpeg (make test does this when run as root)", tool)
		}
	}
	media := t.TempDir()
	stack := devstack.StartForTest(t, devstack.Config{APIKey: testAPIKey, FileRoots: []string{media}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// runErr runs the CLI and returns its stdout and stderr apart, as a
	// script piping stdout sees them.
	runErr := func(args ...string) (string, string, error) {
		var out, errOut bytes.Buffer
		cmd := New()
		cmd.SetArgs(append(args, "--server", stack.GRPCAddr, "--api-key", testAPIKey))
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		err := cmd.ExecuteContext(ctx)
		return out.String(), errOut.String(), err
	}
	run := func(args ...string) (string, error) {
		out, _, err := runErr(args...)
		return out, err
	}
	t.Run("restart", func(t *testing.T) { testRestart(ctx, t, stack, media, run) })
	t.Run("cancel --wait", func(t *testing.T) { testCancelWait(ctx, t, run) })
	t.Run("restart --wait", func(t *testing.T) { testRestartWait(t, media, run) })
	t.Run("list -o json pages", func(t *testing.T) { testListJSONPages(t, runErr) })
	t.Run("submit-batch", func(t *testing.T) { testSubmitBatch(ctx, t, stack.GRPCAddr) })
	t.Run("submit-batch refused", func(t *testing.T) { testSubmitBatchRefused(ctx, t, stack.GRPCAddr) })
}

// testListJSONPages pages through the tenant's jobs (two of its own and any
// the other subtests left), one per page, with -o json: stdout holds only
// the page's job as JSON, the next page's token is on stderr, and following
// the tokens lists every job once, in the order of one big page.
func testListJSONPages(t *testing.T, runErr func(...string) (string, string, error)) {
	// ids decodes the stream of job objects list -o json writes.
	ids := func(out string) []string {
		t.Helper()
		var got []string
		for dec := json.NewDecoder(strings.NewReader(out)); dec.More(); {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				t.Fatalf("list -o json stdout is not JSON objects (%v):\n%s", err, out)
			}
			got = append(got, decodeJob(t, string(raw)).Id)
		}
		return got
	}
	var mine []string
	for range 2 {
		out, _, err := runErr("jobs", "submit", "--profile", "NoOp", "-o", "json")
		if err != nil {
			t.Fatalf("submit: %v", err)
		}
		mine = append(mine, decodeJob(t, out).Id)
	}
	out, _, err := runErr("jobs", "list", "-o", "json", "--page-size", "1000")
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	all := ids(out)
	if joined := " " + strings.Join(all, " ") + " "; !strings.Contains(joined, " "+mine[0]+" ") || !strings.Contains(joined, " "+mine[1]+" ") {
		t.Fatalf("list: %v, want the submitted %v among them", all, mine)
	}

	var paged []string
	token := ""
	for range all {
		args := []string{"jobs", "list", "-o", "json", "--page-size", "1"}
		if token != "" {
			args = append(args, "--page-token", token)
		}
		out, errOut, err := runErr(args...)
		if err != nil {
			t.Fatalf("list page %d: %v", len(paged)+1, err)
		}
		page := ids(out)
		if len(page) != 1 {
			t.Fatalf("list page %d: %d jobs, want 1:\n%s", len(paged)+1, len(page), out)
		}
		paged = append(paged, page[0])
		token = ""
		if errOut != "" {
			var ok bool
			if token, ok = strings.CutPrefix(strings.TrimSuffix(errOut, "\n"), "more: --page-token "); !ok || token == "" || strings.Contains(token, "\n") {
				t.Fatalf("list page %d: stderr %q, want only \"more: --page-token TOKEN\"", len(paged), errOut)
			}
		}
		if token == "" {
			break
		}
	}
	if token != "" || strings.Join(paged, " ") != strings.Join(all, " ") {
		t.Fatalf("paging one job at a time gave %v (next token %q), want every job once and no token after the last: %v", paged, token, all)
	}
}

// decodeJob reads one job printed with -o json.
func decodeJob(t *testing.T, out string) *jobsv1.Job {
	t.Helper()
	j := &jobsv1.Job{}
	if err := protojson.Unmarshal([]byte(out), j); err != nil || j.Id == "" {
		t.Fatalf("not a job in JSON (%v):\n%s", err, out)
	}
	return j
}

// makeClip writes a one-second H.264 clip at path, a valid input for
// ExtractTechnicalMetadata.
func makeClip(t *testing.T, path string) {
	t.Helper()
	if out, err := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error",
		"-f", "lavfi", "-i", "testsrc=duration=1:size=160x120:rate=25",
		"-c:v", "libx264", "-pix_fmt", "yuv420p", path).CombinedOutput(); err != nil {
		t.Fatalf("make fixture: %v\n%s", err, out)
	}
}

// testRestart runs `medius jobs restart`: a job that failed for want of its
// input runs again once the input is there, and a job that cannot be
// restarted is refused with the mediator's reason and problem type.
// `medius jobs executions` then shows both of the job's attempts.
func testRestart(ctx context.Context, t *testing.T, stack *devstack.Stack, media string, run func(...string) (string, error)) {
	decode := func(out string) *jobsv1.Job { t.Helper(); return decodeJob(t, out) }

	// The input does not exist yet: the job fails, and --wait says so in its
	// exit status.
	clip := filepath.Join(media, "clip.mp4")
	out, err := run("jobs", "submit", "--profile", "ExtractTechnicalMetadata", "--input", "inputFile=file://"+clip, "--wait", "-o", "json")
	failed := decode(out)
	if err == nil || failed.Status != jobsv1.JobStatus_JOB_STATUS_FAILED || !strings.Contains(failed.GetError().GetType(), "input-not-found") {
		t.Fatalf("submit of a missing input: err %v, want an error and FAILED input-not-found:\n%s", err, out)
	}

	// Once the input is there, a restart runs the job again to completion.
	makeClip(t, clip)
	out, err = run("jobs", "restart", failed.Id)
	if err != nil {
		t.Fatalf("restart of a FAILED job: %v", err)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 ||
		!strings.Contains(lines[1], failed.Id) || !strings.Contains(lines[1], "QUEUED") || !strings.Contains(lines[1], "restarted") {
		t.Errorf("restart table, want the job QUEUED and restarted:\n%s", out)
	}
	out, err = run("jobs", "wait", failed.Id, "-o", "json")
	if done := decode(out); err != nil || done.Status != jobsv1.JobStatus_JOB_STATUS_COMPLETED || done.GetOutput().GetData().AsMap()["technicalMetadata"] == nil {
		t.Fatalf("restarted job: err %v, want COMPLETED with technical metadata:\n%s", err, out)
	}

	// Each run is an execution of its own: the failed first attempt keeps
	// its error, the restart's second attempt completed. The processor
	// stores an execution before the job's status is announced, so both are
	// there once the job is seen COMPLETED.
	out, err = run("jobs", "executions", failed.Id, "-o", "json")
	if err != nil {
		t.Fatalf("executions: %v", err)
	}
	var raw []json.RawMessage
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("executions -o json is not a JSON array (%v):\n%s", err, out)
	}
	execs := make([]*jobsv1.Execution, len(raw))
	for i, r := range raw {
		execs[i] = &jobsv1.Execution{}
		if err := protojson.Unmarshal(r, execs[i]); err != nil {
			t.Fatalf("execution %d: %v\n%s", i, err, r)
		}
	}
	if len(execs) != 2 ||
		execs[0].GetAttempt() != 1 || execs[0].GetStatus() != jobsv1.JobStatus_JOB_STATUS_FAILED || !strings.Contains(execs[0].GetError().GetType(), "input-not-found") ||
		execs[1].GetAttempt() != 2 || execs[1].GetStatus() != jobsv1.JobStatus_JOB_STATUS_COMPLETED || execs[1].GetError() != nil ||
		execs[1].GetService() == "" || execs[1].GetEndTime() == nil {
		t.Fatalf("executions, want attempt 1 FAILED input-not-found and attempt 2 COMPLETED by a service:\n%s", out)
	}
	out, err = run("jobs", "executions", failed.Id)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) != 3 || !strings.HasPrefix(lines[0], "ATTEMPT") ||
		!strings.HasPrefix(lines[1], "1 ") || !strings.Contains(lines[1], "FAILED") || !strings.Contains(lines[1], "input-not-found: ") ||
		!strings.HasPrefix(lines[2], "2 ") || !strings.Contains(lines[2], "COMPLETED") || !strings.Contains(lines[2], execs[1].GetService()) {
		t.Errorf("executions table: err %v, want a header, attempt 1 FAILED with its error and attempt 2 COMPLETED:\n%s", err, out)
	}

	// A COMPLETED job cannot run again; the error names the problem type.
	_, err = run("jobs", "restart", failed.Id, "-o", "json")
	if want := "Failed precondition (job-not-restartable): job " + failed.Id + " is COMPLETED; only FAILED or CANCELED jobs can be restarted"; status.Code(err) != codes.FailedPrecondition || Describe(err) != want {
		t.Errorf("restart of a COMPLETED job: %v (%s), want FailedPrecondition: %s", err, Describe(err), want)
	}

	// Nor can one whose deadline has passed: the refusal names the deadline.
	cc, err := grpcx.Dial(stack.GRPCAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	deadline := time.Now().Add(2 * time.Second).Truncate(time.Second)
	late, err := jobsv1.NewJobServiceClient(cc).CreateJob(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+testAPIKey),
		&jobsv1.CreateJobRequest{Job: &jobsv1.Job{
			Profile:  "ExtractTechnicalMetadata",
			Input:    &jobsv1.JobInput{Locators: map[string]*jobsv1.Locator{"inputFile": {Url: "file://" + filepath.Join(media, "nope.mp4")}}},
			Deadline: timestamppb.New(deadline),
		}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run("jobs", "wait", late.Id); err == nil {
		t.Fatalf("job %s with a missing input did not fail", late.Id)
	}
	// Waiting for the deadline is the condition under test, not a timing
	// assertion.
	time.Sleep(time.Until(deadline) + 100*time.Millisecond)
	_, err = run("jobs", "restart", late.Id)
	if want := "(job-deadline-passed): job " + late.Id + " cannot be restarted: its deadline " + deadline.UTC().Format(time.RFC3339) + " has passed"; status.Code(err) != codes.FailedPrecondition || !strings.Contains(Describe(err), want) {
		t.Errorf("restart past the deadline: %v (%s), want FailedPrecondition saying %q", err, Describe(err), want)
	}

	// An unknown job is NotFound, as for cancel.
	if _, err := run("jobs", "restart", "no-such-job"); status.Code(err) != codes.NotFound || Describe(err) != `Not found (job-not-found): job "no-such-job" not found` {
		t.Errorf("restart of an unknown job: %v (%s), want NotFound job-not-found", err, Describe(err))
	}
	if _, err := run("jobs", "executions", "no-such-job"); status.Code(err) != codes.NotFound {
		t.Errorf("executions of an unknown job: %v, want NotFound", err)
	}
}

// testCancelWait runs `medius jobs cancel --wait` on a running job: it
// returns once the job is CANCELED, prints it so, and exits 0, the cancel
// having done what was asked.
func testCancelWait(ctx context.Context, t *testing.T, run func(...string) (string, error)) {
	count := func() int {
		t.Helper()
		out, err := run("jobs", "list", "-o", "json", "--page-size", "1000")
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		return countObjects(t, out)
	}
	// A typo in -o is refused before anything is asked of the mediator,
	// not after the job was submitted (its id then never shown).
	before := count()
	if _, err := run("jobs", "submit", "--profile", "Sleep", "-o", "yaml"); err == nil || !strings.Contains(err.Error(), `--output "yaml"`) {
		t.Fatalf("submit -o yaml: %v, want the output refused", err)
	}
	if after := count(); after != before {
		t.Fatalf("submit -o yaml submitted a job: %d jobs, were %d", after, before)
	}

	out, err := run("jobs", "submit", "--profile", "Sleep", "--param", "seconds=600", "-o", "json")
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	id := decodeJob(t, out).Id
	// The job is running before it is canceled: cancel --wait must see it
	// through the processor's stop, not a job never dispatched.
	for {
		out, err := run("jobs", "get", id, "-o", "json")
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if decodeJob(t, out).Status == jobsv1.JobStatus_JOB_STATUS_RUNNING {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("job %s never RUNNING: %v", id, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	out, err = run("jobs", "cancel", id, "--wait", "-o", "json")
	if j := decodeJob(t, out); j.Id != id || j.Status != jobsv1.JobStatus_JOB_STATUS_CANCELED || j.EndTime == nil {
		t.Fatalf("cancel --wait printed, want the job CANCELED and ended:\n%s", out)
	}
	if err != nil {
		t.Errorf("cancel --wait of a job it canceled: %v, want no error (exit 0)", err)
	}
	// Canceling it again is refused, the error naming its problem type.
	if _, err := run("jobs", "cancel", id, "--wait"); status.Code(err) != codes.FailedPrecondition ||
		Describe(err) != "Failed precondition (job-terminal): job "+id+" is already CANCELED" {
		t.Errorf("cancel of a CANCELED job: %v (%s), want FailedPrecondition job-terminal", err, Describe(err))
	}
}

// testRestartWait runs `medius jobs restart --wait`: it returns when the
// restarted run ends, not with the end of the run before it, and exits as
// submit --wait does.
func testRestartWait(t *testing.T, media string, run func(...string) (string, error)) {
	clip := filepath.Join(media, "later.mp4")
	out, err := run("jobs", "submit", "--profile", "ExtractTechnicalMetadata", "--input", "inputFile=file://"+clip, "--wait", "-o", "json")
	id := decodeJob(t, out).Id
	if err == nil {
		t.Fatalf("submit of a missing input did not fail:\n%s", out)
	}

	// Still no input: the second run fails as well, and --wait shows that
	// run's end (attempt 2), not the first's.
	out, err = run("jobs", "restart", id, "--wait", "-o", "json")
	j := decodeJob(t, out)
	if ex := j.GetExecutions(); j.Status != jobsv1.JobStatus_JOB_STATUS_FAILED || len(ex) != 2 || ex[1].GetAttempt() != 2 || ex[1].GetStatus() != jobsv1.JobStatus_JOB_STATUS_FAILED {
		t.Fatalf("restart --wait without the input printed, want the job FAILED in attempt 2:\n%s", out)
	}
	if want := "job " + id + " ended FAILED"; err == nil || err.Error() != want {
		t.Errorf("restart --wait of a run that failed: err %v, want %q", err, want)
	}

	makeClip(t, clip)
	out, err = run("jobs", "restart", id, "--wait", "-o", "json")
	if j := decodeJob(t, out); err != nil || j.Status != jobsv1.JobStatus_JOB_STATUS_COMPLETED || len(j.GetExecutions()) != 3 ||
		j.GetOutput().GetData().AsMap()["technicalMetadata"] == nil {
		t.Fatalf("restart --wait with the input: err %v, want the job COMPLETED in attempt 3 with technical metadata:\n%s", err, out)
	}
}

// TestCanceledTooLate checks how cancel --wait judges the end it waited
// for: CANCELED is success, any other end means the job finished before
// the cancel took effect, and the message says so. (On a live stack that
// case is a race between the cancel and the run's end, so it is checked
// here, where the end is given.)
func TestCanceledTooLate(t *testing.T) {
	for _, tc := range []struct {
		status jobsv1.JobStatus
		want   string
	}{
		{jobsv1.JobStatus_JOB_STATUS_CANCELED, ""},
		{jobsv1.JobStatus_JOB_STATUS_COMPLETED, "job j1 ended COMPLETED before the cancel took effect"},
		{jobsv1.JobStatus_JOB_STATUS_FAILED, "job j1 ended FAILED before the cancel took effect"},
	} {
		err := canceledTooLate(&jobsv1.Job{Id: "j1", Status: tc.status})
		if got := fmt.Sprint(err); (tc.want == "" && err != nil) || (tc.want != "" && got != tc.want) {
			t.Errorf("%s: %v, want %q", tc.status, err, tc.want)
		}
	}
}

// countObjects counts the jobs of list -o json, a stream of objects, one
// per job.
func countObjects(t *testing.T, out string) int {
	t.Helper()
	n := 0
	for dec := json.NewDecoder(strings.NewReader(out)); dec.More(); n++ {
		var j json.RawMessage
		if err := dec.Decode(&j); err != nil {
			t.Fatalf("list -o json: %v\n%s", err, out)
		}
	}
	return n
}
