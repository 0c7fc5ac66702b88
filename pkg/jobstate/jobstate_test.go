package jobstate

import (
	"testing"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
)

const (
	unspecified = jobsv1.JobStatus_JOB_STATUS_UNSPECIFIED
	newS        = jobsv1.JobStatus_JOB_STATUS_NEW
	queued      = jobsv1.JobStatus_JOB_STATUS_QUEUED
	scheduled   = jobsv1.JobStatus_JOB_STATUS_SCHEDULED
	running     = jobsv1.JobStatus_JOB_STATUS_RUNNING
	completed   = jobsv1.JobStatus_JOB_STATUS_COMPLETED
	failed      = jobsv1.JobStatus_JOB_STATUS_FAILED
	canceled    = jobsv1.JobStatus_JOB_STATUS_CANCELED
)

func TestCanTransition(t *testing.T) {
	all := []jobsv1.JobStatus{newS, queued, scheduled, running, completed, failed, canceled}
	allowed := map[[2]jobsv1.JobStatus]bool{}
	forward := []jobsv1.JobStatus{newS, queued, scheduled, running}
	for i, from := range forward {
		for _, to := range forward[i:] {
			allowed[[2]jobsv1.JobStatus{from, to}] = true
		}
		for _, to := range []jobsv1.JobStatus{completed, failed, canceled} {
			allowed[[2]jobsv1.JobStatus{from, to}] = true
		}
	}
	for _, from := range all {
		for _, to := range all {
			want := allowed[[2]jobsv1.JobStatus{from, to}]
			if got := CanTransition(from, to); got != want {
				t.Errorf("CanTransition(%s, %s) = %v, want %v", Name(from), Name(to), got, want)
			}
		}
		if CanTransition(from, unspecified) {
			t.Errorf("CanTransition(%s, UNSPECIFIED) allowed", Name(from))
		}
	}
}

func TestTerminalNeverMoves(t *testing.T) {
	for _, s := range []jobsv1.JobStatus{completed, failed, canceled} {
		if !IsTerminal(s) {
			t.Errorf("%s not terminal", Name(s))
		}
		for _, to := range []jobsv1.JobStatus{newS, queued, scheduled, running, completed, failed, canceled} {
			if CanTransition(s, to) {
				t.Errorf("terminal %s may move to %s", Name(s), Name(to))
			}
		}
	}
}

func TestMCMANames(t *testing.T) {
	cases := map[string]jobsv1.JobStatus{
		"NEW": newS, "pending": queued, "Queued": queued, "ASSIGNED": scheduled, "scheduled": scheduled,
		"RUNNING": running, "completed": completed, "FAILED": failed, "Canceled": canceled, "CANCELLED": canceled,
	}
	for name, want := range cases {
		got, ok := FromMCMA(name)
		if !ok || got != want {
			t.Errorf("FromMCMA(%q) = %s, %v; want %s", name, Name(got), ok, Name(want))
		}
	}
	if _, ok := FromMCMA("DONE"); ok {
		t.Error(`FromMCMA("DONE") accepted`)
	}
	if Name(completed) != "COMPLETED" {
		t.Errorf("Name = %q", Name(completed))
	}
}

func TestLatestAttempt(t *testing.T) {
	ex := func(attempts ...int32) *jobsv1.Job {
		j := &jobsv1.Job{}
		for _, a := range attempts {
			j.Executions = append(j.Executions, &jobsv1.Execution{Attempt: a})
		}
		return j
	}
	for _, tt := range []struct {
		job  *jobsv1.Job
		want int32
	}{{ex(), 0}, {ex(1), 1}, {ex(1, 2, 3), 3}, {ex(2, 1), 2}} {
		if got := LatestAttempt(tt.job); got != tt.want {
			t.Errorf("LatestAttempt(%v) = %d, want %d", tt.job.GetExecutions(), got, tt.want)
		}
	}
}
