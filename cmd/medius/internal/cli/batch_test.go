package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
)

// batchRunner runs the CLI against the stack at addr with stdin as its
// input, returning stdout and stderr apart.
func batchRunner(ctx context.Context, addr string) func(stdin string, args ...string) (string, string, error) {
	return func(stdin string, args ...string) (string, string, error) {
		var out, errOut bytes.Buffer
		cmd := New()
		cmd.SetArgs(append(args, "--server", addr, "--api-key", testAPIKey))
		cmd.SetIn(strings.NewReader(stdin))
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		err := cmd.ExecuteContext(ctx)
		return out.String(), errOut.String(), err
	}
}

// batchRow is a row of submit-batch's table.
type batchRow struct{ line, id, result string }

func batchRows(t *testing.T, out string) []batchRow {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) == 0 || strings.Join(strings.Fields(lines[0]), " ") != "LINE ID RESULT" {
		t.Fatalf("submit-batch table, want a LINE ID RESULT header:\n%s", out)
	}
	var rows []batchRow
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 3 {
			t.Fatalf("submit-batch row %q, want line, id, result:\n%s", l, out)
		}
		rows = append(rows, batchRow{f[0], f[1], strings.Join(f[2:], " ")})
	}
	return rows
}

// testSubmitBatch submits a file of three jobs (and a blank line), one of
// them repeating the request id of a job submitted before: every line is
// answered with its job, in the file's order and by its line number, the
// repeated request id with the earlier job. Submitting the file again from
// stdin with -o json answers the jobs with request ids with the same jobs.
func testSubmitBatch(ctx context.Context, t *testing.T, addr string) {
	run := batchRunner(ctx, addr)
	out, _, err := run("", "jobs", "submit", "--profile", "NoOp", "--request-id", "cli-batch-1", "-o", "json")
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	earlier := decodeJob(t, out)

	file := `{"profile":"NoOp"}

{"profile":"NoOp","requestId":"cli-batch-1"}
{"profile":"NoOp","requestId":"cli-batch-2","tags":{"from":"batch"}}
`
	path := filepath.Join(t.TempDir(), "jobs.ndjson")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := run("", "jobs", "submit-batch", path)
	if err != nil || errOut != "" {
		t.Fatalf("submit-batch: %v, stderr %q, want every job created:\n%s", err, errOut, out)
	}
	rows := batchRows(t, out)
	if len(rows) != 3 || rows[0].line != "1" || rows[1].line != "3" || rows[2].line != "4" {
		t.Fatalf("submit-batch table, want rows for lines 1, 3 and 4:\n%s", out)
	}
	if rows[1].id != earlier.Id {
		t.Errorf("line 3 repeats request id cli-batch-1: job %s, want the earlier job %s:\n%s", rows[1].id, earlier.Id, out)
	}
	if rows[0].id == rows[2].id || rows[0].id == earlier.Id || rows[2].id == earlier.Id {
		t.Errorf("lines 1 and 4, want two new jobs:\n%s", out)
	}
	// Each new job exists as its line asked.
	for _, r := range []batchRow{rows[0], rows[2]} {
		out, _, err := run("", "jobs", "get", r.id, "-o", "json")
		if err != nil {
			t.Fatalf("get %s (line %s): %v", r.id, r.line, err)
		}
		if j := decodeJob(t, out); j.Profile != "NoOp" || r.result == "-" {
			t.Errorf("line %s: job %s, result %q, want a NoOp job and its status", r.line, out, r.result)
		}
	}
	out, _, err = run("", "jobs", "get", rows[2].id, "-o", "json")
	if j := decodeJob(t, out); err != nil || j.Tags["from"] != "batch" || j.RequestId != "cli-batch-2" {
		t.Errorf("line 4's job: %v, want its tag and request id:\n%s", err, out)
	}

	// Again, from stdin: a retry of the file. The jobs with request ids are
	// the same; line 1, without one, is a new job.
	out, errOut, err = run(file, "jobs", "submit-batch", "-", "-o", "json")
	if err != nil || errOut != "" {
		t.Fatalf("submit-batch - -o json: %v, stderr %q:\n%s", err, errOut, out)
	}
	var got []batchResultJSON
	for dec := json.NewDecoder(strings.NewReader(out)); dec.More(); {
		var r batchResultJSON
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("submit-batch -o json is not JSON objects (%v):\n%s", err, out)
		}
		got = append(got, r)
	}
	if len(got) != 3 || got[0].Line != 1 || got[1].Line != 3 || got[2].Line != 4 {
		t.Fatalf("submit-batch -o json, want results for lines 1, 3 and 4:\n%s", out)
	}
	for i, want := range []string{"", earlier.Id, rows[2].id} {
		if got[i].Error != nil {
			t.Fatalf("line %d: error %s, want a job", got[i].Line, got[i].Error)
		}
		switch j := decodeJob(t, string(got[i].Job)); {
		case want == "" && (j.Id == rows[0].id || j.Id == earlier.Id):
			t.Errorf("line 1 of the retry, without a request id: job %s, want a new job", j.Id)
		case want != "" && j.Id != want:
			t.Errorf("line %d of the retry: job %s, want %s, the job of its request id", got[i].Line, j.Id, want)
		}
	}
}

// testSubmitBatchRefused submits files that cannot be submitted whole: one
// with lines that are not jobs, refused by the CLI, and one naming an
// unknown profile, refused by the mediator. Either names the line at fault
// and creates no job, not even those of the good lines.
func testSubmitBatchRefused(ctx context.Context, t *testing.T, addr string) {
	run := batchRunner(ctx, addr)
	count := func() int {
		t.Helper()
		out, _, err := run("", "jobs", "list", "-o", "json", "--page-size", "1000")
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		return countObjects(t, out)
	}
	before := count()

	malformed := "{\"profile\":\"NoOp\"}\n\n{\"profil\":\"NoOp\"}\n{\"profile\":\"NoOp\"\n"
	out, _, err := run(malformed, "jobs", "submit-batch", "-")
	if want := `stdin line 3: unknown field "profil" (column 2) (and 1 more bad lines); nothing submitted`; err == nil || err.Error() != want {
		t.Errorf("submit-batch of malformed lines: %v, want %q", err, want)
	}
	if out != "" {
		t.Errorf("submit-batch of malformed lines printed:\n%s", out)
	}

	unknown := "{\"profile\":\"NoOp\"}\n\n{\"profile\":\"NoSuchProfile\"}\n"
	out, _, err = run(unknown, "jobs", "submit-batch", "-")
	if want := `Invalid argument (invalid-argument): line 3: unknown profile "NoSuchProfile" (field job.profile)`; status.Code(err) != codes.InvalidArgument || Describe(err) != want {
		t.Errorf("submit-batch of an unknown profile: %v (%s), want InvalidArgument: %s", err, Describe(err), want)
	}
	if out != "" {
		t.Errorf("submit-batch of an unknown profile printed:\n%s", out)
	}
	if after := count(); after != before {
		t.Errorf("refused files created jobs: %d jobs, were %d", after, before)
	}
}

// The results of a call print by line, a job that was not created with
// its problem, and are counted; a later call's failure says which lines
// were submitted and which not. (A job refused among created ones needs a
// quota reached or a store failing, which the stack of TestJobs does not
// have.)
func TestBatchResults(t *testing.T) {
	batch := []batchLine{{line: 2}, {line: 5}}
	results := []*jobsv1.BatchCreateJobsResult{
		{Result: &jobsv1.BatchCreateJobsResult_Job{Job: &jobsv1.Job{Id: "j1", Status: jobsv1.JobStatus_JOB_STATUS_NEW}}},
		{Result: &jobsv1.BatchCreateJobsResult_Error{Error: problem.ResourceExhausted("quota-max-concurrent-jobs", "tenant t runs 2 jobs,\nat most 2 at once").Problem()}},
	}
	var out bytes.Buffer
	p := &batchPrinter{w: &out, format: "table"}
	if n, err := p.print(batch, results); err != nil || n != 1 {
		t.Fatalf("print: %d not created, %v; want 1", n, err)
	}
	if got, want := out.String(), "LINE  ID  RESULT\n"+
		"2     j1  NEW\n"+
		"5     -   quota-max-concurrent-jobs: tenant t runs 2 jobs, at most 2 at once\n"; got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}

	out.Reset()
	p = &batchPrinter{w: &out, format: "json"}
	if n, err := p.print(batch, results); err != nil || n != 1 {
		t.Fatalf("print json: %d not created, %v; want 1", n, err)
	}
	var got []batchResultJSON
	for dec := json.NewDecoder(bytes.NewReader(out.Bytes())); dec.More(); {
		var r batchResultJSON
		if err := dec.Decode(&r); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	refused := &jobsv1.Problem{}
	if len(got) != 2 || got[0].Line != 2 || decodeJob(t, string(got[0].Job)).Id != "j1" || got[0].Error != nil ||
		got[1].Line != 5 || got[1].Job != nil || protojson.Unmarshal(got[1].Error, refused) != nil ||
		refused.GetType() != problem.TypePrefix+"quota-max-concurrent-jobs" || refused.GetStatus() != 429 {
		t.Errorf("json results, want line 2's job and line 5's problem:\n%s", out.String())
	}

	// The second of three calls is refused: the first's lines were
	// submitted, the third's not, and requests[1] is line 5.
	lines := []batchLine{{line: 1}, {line: 2}, {line: 5}, {line: 7}}
	err := batchFailed(problem.InvalidArgument("requests[1].job.profile", `requests[1]: unknown profile "X"`).GRPCStatus().Err(), lines, batchSpan{1, 3})
	if want := `Invalid argument (invalid-argument): line 5: unknown profile "X"; line 1 submitted, results above; line 7 not submitted (field job.profile)`; status.Code(err) != codes.InvalidArgument || Describe(err) != want {
		t.Errorf("refused call: %v (%s), want %s", err, Describe(err), want)
	}
	// A call whose answer was lost may have created its jobs.
	err = batchFailed(status.Error(codes.Unavailable, "connection reset"), lines, batchSpan{0, 4})
	if want := `Service Unavailable (unavailable): connection reset; lines 1-7 may or may not have been created`; status.Code(err) != codes.Unavailable || Describe(err) != want {
		t.Errorf("lost call: %v (%s), want %s", err, Describe(err), want)
	}
}

// A file is cut into calls the mediator takes: at most maxBatchJobs jobs
// and maxBatchBytes bytes each, in order.
func TestSplitBatches(t *testing.T) {
	small := make([]batchLine, 2*maxBatchJobs+1)
	for i := range small {
		small[i] = batchLine{line: i + 1, size: 10}
	}
	if got := splitBatches(small); len(got) != 3 || got[0] != (batchSpan{0, maxBatchJobs}) || got[1] != (batchSpan{maxBatchJobs, 2 * maxBatchJobs}) || got[2] != (batchSpan{2 * maxBatchJobs, 2*maxBatchJobs + 1}) {
		t.Errorf("%d small jobs: %v, want two full calls and one of 1", len(small), got)
	}
	big := []batchLine{{size: maxBatchBytes / 2}, {size: maxBatchBytes / 2}, {size: 1}, {size: maxBatchBytes}}
	if got := splitBatches(big); len(got) != 3 || got[0] != (batchSpan{0, 2}) || got[1] != (batchSpan{2, 3}) || got[2] != (batchSpan{3, 4}) {
		t.Errorf("large jobs: %v, want calls of at most %d bytes", got, maxBatchBytes)
	}
}

// A line that is not a job is named by its line in the file, protojson's
// own "line 1" (each job being one line) said as a column instead.
func TestReadBatchNamesLine(t *testing.T) {
	_, err := readBatch(strings.NewReader("{\"profile\":\"NoOp\"}\n  \n{\"profile\":\"NoOp\",\"timeout\":\"soon\"}\n"), "jobs.ndjson")
	if err == nil || !strings.HasPrefix(err.Error(), "jobs.ndjson line 3: ") || strings.Contains(err.Error(), "line 1") || !strings.HasSuffix(err.Error(), "; nothing submitted") {
		t.Errorf("bad duration on line 3: %v, want it named as line 3", err)
	}
	if _, err := readBatch(strings.NewReader("\n\n"), "empty"); err == nil || err.Error() != "empty holds no jobs" {
		t.Errorf("blank file: %v, want no jobs", err)
	}
	lines, err := readBatch(strings.NewReader("\n{\"profile\":\"NoOp\",\"requestId\":\"r\"}\n"), "f")
	if err != nil || len(lines) != 1 || lines[0].line != 2 || lines[0].req.GetJob().GetRequestId() != "r" || lines[0].size <= 0 {
		t.Errorf("one job on line 2: %+v, %v", lines, err)
	}
	twice := "{\"profile\":\"NoOp\",\"requestId\":\"r\"}\n{\"profile\":\"NoOp\"}\n{\"profile\":\"NoOp\",\"requestId\":\"r\"}\n"
	if _, err := readBatch(strings.NewReader(twice), "f"); err == nil || !strings.HasPrefix(err.Error(), `f line 3: requestId "r" repeats line 1's`) {
		t.Errorf("a request id on lines 1 and 3: %v, want line 3 refused", err)
	}
}
