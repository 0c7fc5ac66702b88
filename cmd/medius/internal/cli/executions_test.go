package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// A tool's multi-line error detail stays on its attempt's row, and a time
// not reached yet shows as "-".
func TestPrintExecutions(t *testing.T) {
	at := timestamppb.New(time.Date(2026, 12, 2, 4, 30, 11, 0, time.UTC))
	var out bytes.Buffer
	err := printExecutions(&out, []*jobsv1.Execution{
		{Attempt: 1, Service: "medius-worker", InstanceId: "w-1", Status: jobsv1.JobStatus_JOB_STATUS_FAILED,
			DispatchTime: at, StartTime: at, EndTime: at,
			Error: &jobsv1.Problem{Type: "urn:medius:problem:tool-failed", Detail: "ffprobe failed: exit status 1:\nclip.mp4: Invalid data\n"}},
		{Attempt: 2, Service: "medius-worker", InstanceId: "w-1", Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, DispatchTime: at, StartTime: at},
	})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ATTEMPT ") ||
		!strings.HasSuffix(lines[1], "tool-failed: ffprobe failed: exit status 1: clip.mp4: Invalid data") ||
		!strings.Contains(lines[2], "RUNNING") || !strings.HasSuffix(strings.Join(strings.Fields(lines[2]), " "), "04:30:11 - -") {
		t.Fatalf("table, want a header and one row per attempt:\n%s", out.String())
	}
	// Columns line up: every row has its STATUS where the header has it.
	col := strings.Index(lines[0], "STATUS")
	if !strings.HasPrefix(lines[1][col:], "FAILED") || !strings.HasPrefix(lines[2][col:], "RUNNING") {
		t.Fatalf("columns not aligned:\n%s", out.String())
	}
}
