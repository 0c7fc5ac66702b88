package jobstate

import (
	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
)

// Current is the latest execution of rec, or nil before the first dispatch.
func Current(rec *jobsv1.Job) *jobsv1.Execution {
	if n := len(rec.GetExecutions()); n > 0 {
		return rec.Executions[n-1]
	}
	return nil
}

// EndedQueued reports whether rec ended after its latest execution had: it
// ended while queued for the next attempt. Whatever ends a job with its
// current execution gives both the same end time.
func EndedQueued(rec *jobsv1.Job) bool {
	cur := Current(rec)
	// Compared as times, not with proto.Equal (reflection): this runs for
	// every status announcement.
	return cur != nil && IsTerminal(rec.GetStatus()) && cur.GetEndTime() != nil && rec.GetEndTime() != nil &&
		!cur.GetEndTime().AsTime().Equal(rec.GetEndTime().AsTime())
}

// Requeued reports whether rec waits for the attempt after its latest
// execution, which has ended (a retry's backoff, or its wait for a
// service), or ended while it did: a state of no execution of its own.
func Requeued(rec *jobsv1.Job) bool {
	cur := Current(rec)
	return cur != nil && IsTerminal(cur.GetStatus()) &&
		(rec.GetStatus() == jobsv1.JobStatus_JOB_STATUS_QUEUED || EndedQueued(rec))
}

// StatusEvent is the JobStatusChanged announcing rec's current state, rec
// being the processor's record of a job.
func StatusEvent(rec *jobsv1.Job) *eventsv1.JobStatusChanged {
	ev := &eventsv1.JobStatusChanged{
		JobId:            rec.GetId(),
		Status:           rec.GetStatus(),
		Progress:         rec.GetProgress(),
		StatusMessage:    rec.GetStatusMessage(),
		Output:           rec.GetOutput(),
		Error:            rec.GetError(),
		VerifiedQuantity: rec.GetVerifiedQuantity(),
		Time:             rec.GetUpdateTime(),
	}
	// While QUEUED the latest execution (if any) is the one a restart
	// added, with nothing to say before its dispatch, or, while waiting for
	// a retry, the attempt that lost its worker: the mediator learns from
	// it that the attempt ended and the job waits again, rather than
	// showing it RUNNING until the retry runs.
	if cur := Current(rec); cur != nil && (rec.GetStatus() != jobsv1.JobStatus_JOB_STATUS_QUEUED || Requeued(rec)) {
		ev.Execution = cur
		// The attempt before, ended, rides along: one that ended as this
		// one began (a reroute: FAILED, the next SCHEDULED at once) is
		// named by no event of its own, and the mediator would keep it as
		// it last heard of it. Each event of the later attempt carries it,
		// so the first the mediator applies ends it there; a first attempt
		// carries nothing.
		if n := len(rec.GetExecutions()); n > 1 {
			if prev := rec.Executions[n-2]; IsTerminal(prev.GetStatus()) {
				ev.PreviousExecution = prev
			}
		}
	}
	return ev
}
