package cli

import (
	"strings"
	"testing"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
)

func TestProgressBar(t *testing.T) {
	running := progressBar(&jobsv1.Job{Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, Progress: 50, StatusMessage: "probing"}, 10)
	if !strings.HasPrefix(running, "[#####-----]  50% RUNNING   probing") || len(running) != 100 {
		t.Fatalf("running bar %q", running)
	}
	// A completed job is full even if its last report said less.
	done := progressBar(&jobsv1.Job{Status: jobsv1.JobStatus_JOB_STATUS_COMPLETED, Progress: 90}, 10)
	if !strings.HasPrefix(done, "[##########] 100% COMPLETED") {
		t.Fatalf("done bar %q", done)
	}
	if bar := progressBar(&jobsv1.Job{Status: jobsv1.JobStatus_JOB_STATUS_RUNNING, Progress: 250}, 10); !strings.Contains(bar, "100%") {
		t.Fatalf("progress beyond 100: %q", bar)
	}
}
