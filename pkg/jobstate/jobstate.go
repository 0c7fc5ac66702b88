// Package jobstate is the job status machine shared by the mediator and the
// processor: which moves are allowed, and which states are final.
package jobstate

import (
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
)

// order ranks the non-terminal states: a job only moves forward, so a late
// RUNNING after COMPLETED, or a SCHEDULED redelivered after RUNNING, is ignored.
var order = map[jobsv1.JobStatus]int{
	jobsv1.JobStatus_JOB_STATUS_NEW:       1,
	jobsv1.JobStatus_JOB_STATUS_QUEUED:    2,
	jobsv1.JobStatus_JOB_STATUS_SCHEDULED: 3,
	jobsv1.JobStatus_JOB_STATUS_RUNNING:   4,
}

// IsTerminal reports whether s can never change again.
func IsTerminal(s jobsv1.JobStatus) bool {
	switch s {
	case jobsv1.JobStatus_JOB_STATUS_COMPLETED, jobsv1.JobStatus_JOB_STATUS_FAILED, jobsv1.JobStatus_JOB_STATUS_CANCELED:
		return true
	}
	return false
}

// CanTransition reports whether a job in from may move to to. Staying in the
// same non-terminal state is allowed (a progress update). A retry moves a
// RUNNING or SCHEDULED job back to QUEUED only through Requeue.
func CanTransition(from, to jobsv1.JobStatus) bool {
	if IsTerminal(from) || to == jobsv1.JobStatus_JOB_STATUS_UNSPECIFIED {
		return false
	}
	if IsTerminal(to) {
		return true
	}
	return order[to] >= order[from]
}

// LatestAttempt is the highest attempt a job record knows of, 0 before
// any: its executions are numbered 1, 2, ... by attempt, a restart's too.
func LatestAttempt(job *jobsv1.Job) int32 {
	var n int32
	for _, ex := range job.GetExecutions() {
		n = max(n, ex.GetAttempt())
	}
	return n
}

// FromMCMA maps an MCMA status name (any case) to a Medius status; MCMA's
// PENDING is QUEUED and ASSIGNED is SCHEDULED.
func FromMCMA(name string) (jobsv1.JobStatus, bool) {
	switch upper(name) {
	case "NEW":
		return jobsv1.JobStatus_JOB_STATUS_NEW, true
	case "QUEUED", "PENDING":
		return jobsv1.JobStatus_JOB_STATUS_QUEUED, true
	case "SCHEDULED", "ASSIGNED":
		return jobsv1.JobStatus_JOB_STATUS_SCHEDULED, true
	case "RUNNING":
		return jobsv1.JobStatus_JOB_STATUS_RUNNING, true
	case "COMPLETED":
		return jobsv1.JobStatus_JOB_STATUS_COMPLETED, true
	case "FAILED":
		return jobsv1.JobStatus_JOB_STATUS_FAILED, true
	case "CANCELED", "CANCELLED":
		return jobsv1.JobStatus_JOB_STATUS_CANCELED, true
	}
	return jobsv1.JobStatus_JOB_STATUS_UNSPECIFIED, false
}

// Name is the MCMA/Cortex name of s: NEW, QUEUED, ..., CANCELED.
func Name(s jobsv1.JobStatus) string {
	n := s.String()
	const prefix = "JOB_STATUS_"
	if len(n) > len(prefix) {
		return n[len(prefix):]
	}
	return n
}

func upper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}
