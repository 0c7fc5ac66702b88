package record

import (
	"fmt"
	"github.com/medius-platform/medius/pkg/jobstate"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	queued    = jobsv1.JobStatus_JOB_STATUS_QUEUED
	scheduled = jobsv1.JobStatus_JOB_STATUS_SCHEDULED
	running   = jobsv1.JobStatus_JOB_STATUS_RUNNING
	completed = jobsv1.JobStatus_JOB_STATUS_COMPLETED
	failed    = jobsv1.JobStatus_JOB_STATUS_FAILED
	canceled  = jobsv1.JobStatus_JOB_STATUS_CANCELED
)

var (
	t0  = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now = t0.Add(time.Minute)
)

// recordIn builds a record of job "j1" whose attempt 2 (attempt 1 failed
// earlier) is in status st with progress p.
func recordIn(st jobsv1.JobStatus, p int32) *jobsv1.Job {
	rec := &jobsv1.Job{Id: "j1", Tenant: "t", Profile: "P", Status: st, Progress: p, CreateTime: timestamppb.New(t0)}
	rec.Executions = []*jobsv1.Execution{
		{Attempt: 1, Service: "svc", Status: failed},
		{Attempt: 2, Service: "svc", Status: st, Progress: p, DispatchTime: timestamppb.New(t0)},
	}
	if st == completed || st == failed || st == canceled {
		rec.EndTime = timestamppb.New(t0)
	}
	return rec
}

func update(attempt int32, st jobsv1.JobStatus, p int32) *eventsv1.ExecutionUpdate {
	return &eventsv1.ExecutionUpdate{JobId: "j1", Attempt: attempt, Service: "svc", InstanceId: "i1", Status: st, Progress: p}
}

func TestApply(t *testing.T) {
	output := &jobsv1.JobOutput{Data: &structpb.Struct{Fields: map[string]*structpb.Value{"duration": structpb.NewNumberValue(12)}}}
	boom := &jobsv1.Problem{Type: "urn:medius:problem:input-not-found", Detail: "no such file"}
	tests := []struct {
		name       string
		rec        *jobsv1.Job
		u          *eventsv1.ExecutionUpdate
		want       Outcome
		wantStatus jobsv1.JobStatus
		wantProg   int32
		check      func(t *testing.T, rec *jobsv1.Job)
	}{
		{
			name: "running after scheduled", rec: recordIn(scheduled, 0), u: update(2, running, 5),
			want: Applied, wantStatus: running, wantProg: 5,
			check: func(t *testing.T, rec *jobsv1.Job) {
				cur := jobstate.Current(rec)
				if cur.InstanceId != "i1" || cur.StartTime == nil {
					t.Errorf("execution = %v, want instance i1 and a start time", cur)
				}
			},
		},
		{name: "progress forward", rec: recordIn(running, 10), u: update(2, running, 40), want: Applied, wantStatus: running, wantProg: 40},
		{name: "progress backwards is stale", rec: recordIn(running, 40), u: update(2, running, 10), want: Ignored, wantStatus: running, wantProg: 40},
		{name: "same progress is a duplicate", rec: recordIn(running, 40), u: update(2, running, 40), want: AlreadyApplied, wantStatus: running, wantProg: 40},
		{name: "progress clamped to 100", rec: recordIn(running, 40), u: update(2, running, 140), want: Applied, wantStatus: running, wantProg: 100},
		{
			name: "completed", rec: recordIn(running, 40),
			u:    &eventsv1.ExecutionUpdate{JobId: "j1", Attempt: 2, Status: completed, Output: output, VerifiedQuantity: 12.5},
			want: Applied, wantStatus: completed, wantProg: 100,
			check: func(t *testing.T, rec *jobsv1.Job) {
				if !proto.Equal(rec.Output, output) || rec.VerifiedQuantity != 12.5 || rec.EndTime == nil {
					t.Errorf("record = %v, want output, verified quantity and end time", rec)
				}
				if cur := jobstate.Current(rec); cur.Status != completed || cur.Progress != 100 || cur.EndTime == nil || cur.InstanceId != "" {
					t.Errorf("execution = %v", cur)
				}
			},
		},
		{name: "completed straight from scheduled", rec: recordIn(scheduled, 0), u: update(2, completed, 0), want: Applied, wantStatus: completed, wantProg: 100},
		{
			name: "failed", rec: recordIn(running, 40),
			u:    &eventsv1.ExecutionUpdate{JobId: "j1", Attempt: 2, Status: failed, Error: boom},
			want: Applied, wantStatus: failed, wantProg: 40,
			check: func(t *testing.T, rec *jobsv1.Job) {
				if !proto.Equal(rec.Error, boom) || !proto.Equal(jobstate.Current(rec).Error, boom) {
					t.Errorf("error = %v / %v, want %v", rec.Error, jobstate.Current(rec).Error, boom)
				}
				if rec.StatusMessage != "no such file" {
					t.Errorf("status message = %q", rec.StatusMessage)
				}
			},
		},
		{
			name: "failed without a problem gets one", rec: recordIn(running, 40),
			u:    &eventsv1.ExecutionUpdate{JobId: "j1", Attempt: 2, Status: failed, Message: "exit 1"},
			want: Applied, wantStatus: failed, wantProg: 40,
			check: func(t *testing.T, rec *jobsv1.Job) {
				if rec.Error.GetType() != ProblemExecutionFailed || rec.Error.GetDetail() != "exit 1" {
					t.Errorf("error = %v", rec.Error)
				}
			},
		},
		{name: "canceled by the worker", rec: recordIn(running, 40), u: update(2, canceled, 40), want: Applied, wantStatus: canceled, wantProg: 40},
		{name: "old attempt", rec: recordIn(running, 40), u: update(1, completed, 100), want: Ignored, wantStatus: running, wantProg: 40},
		{name: "future attempt", rec: recordIn(running, 40), u: update(3, running, 50), want: Ignored, wantStatus: running, wantProg: 40},
		{name: "no execution yet", rec: &jobsv1.Job{Id: "j1", Status: queued}, u: update(1, running, 0), want: Ignored, wantStatus: queued},
		{name: "late running after completed", rec: recordIn(completed, 100), u: update(2, running, 50), want: Ignored, wantStatus: completed, wantProg: 100},
		{name: "failed after completed", rec: recordIn(completed, 100), u: update(2, failed, 0), want: Ignored, wantStatus: completed, wantProg: 100},
		{name: "completed twice", rec: recordIn(completed, 100), u: update(2, completed, 100), want: AlreadyApplied, wantStatus: completed, wantProg: 100},
		{name: "running after canceled", rec: recordIn(canceled, 10), u: update(2, running, 20), want: Ignored, wantStatus: canceled, wantProg: 10},
		{name: "canceled after canceled", rec: recordIn(canceled, 10), u: update(2, canceled, 10), want: AlreadyApplied, wantStatus: canceled, wantProg: 10},
		{name: "worker may not report scheduled", rec: recordIn(running, 10), u: update(2, scheduled, 0), want: Ignored, wantStatus: running, wantProg: 10},
		{name: "worker may not report queued", rec: recordIn(scheduled, 0), u: update(2, queued, 0), want: Ignored, wantStatus: scheduled},
		{name: "unspecified status", rec: recordIn(scheduled, 0), u: update(2, jobsv1.JobStatus_JOB_STATUS_UNSPECIFIED, 0), want: Ignored, wantStatus: scheduled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := proto.CloneOf(tt.rec)
			got := Apply(tt.rec, tt.u, now)
			if got != tt.want {
				t.Fatalf("Apply = %v, want %v", got, tt.want)
			}
			if tt.want != Applied && !proto.Equal(before, tt.rec) {
				t.Errorf("%v changed the record:\n got %v\nwant %v", got, tt.rec, before)
			}
			if tt.rec.Status != tt.wantStatus || tt.rec.Progress != tt.wantProg {
				t.Errorf("record %v/%d, want %v/%d", tt.rec.Status, tt.rec.Progress, tt.wantStatus, tt.wantProg)
			}
			if cur := jobstate.Current(tt.rec); cur != nil && cur.Status != tt.rec.Status && tt.want == Applied {
				t.Errorf("execution status %v != record status %v", cur.Status, tt.rec.Status)
			}
			if tt.check != nil {
				tt.check(t, tt.rec)
			}
		})
	}
}

// A duplicate of an applied update must be a no-op the second time.
func TestApplyTwice(t *testing.T) {
	for _, u := range []*eventsv1.ExecutionUpdate{update(2, running, 0), update(2, running, 30), update(2, completed, 100), update(2, failed, 0), update(2, canceled, 0)} {
		t.Run(u.Status.String(), func(t *testing.T) {
			rec := recordIn(scheduled, 0)
			if got := Apply(rec, u, now); got != Applied {
				t.Fatalf("first Apply = %v", got)
			}
			after := proto.CloneOf(rec)
			if got := Apply(rec, u, now.Add(time.Second)); got != AlreadyApplied {
				t.Fatalf("second Apply = %v, want AlreadyApplied", got)
			}
			if !proto.Equal(after, rec) {
				t.Errorf("second Apply changed the record")
			}
		})
	}
}

// The status message tells about the current state: one set before the run
// ("restarted", "worker lost; retrying") gives way to the worker's reports,
// while a progress report without a message keeps the running one's.
func TestApplyStatusMessage(t *testing.T) {
	rec := recordIn(scheduled, 0)
	rec.StatusMessage = "restarted"
	Apply(rec, update(2, running, 0), now)
	if rec.StatusMessage != "" {
		t.Fatalf("RUNNING kept %q from before the run", rec.StatusMessage)
	}
	u := update(2, running, 10)
	u.Message = "decoding"
	Apply(rec, u, now)
	Apply(rec, update(2, running, 20), now)
	if rec.StatusMessage != "decoding" {
		t.Fatalf("progress without a message: %q, want the running one's kept", rec.StatusMessage)
	}
	f := update(2, failed, 0)
	f.Error = &jobsv1.Problem{Type: "urn:x", Title: "Bad input", Detail: "no audio stream"}
	Apply(rec, f, now)
	if rec.StatusMessage != "no audio stream" {
		t.Fatalf("FAILED: %q, want its problem's detail", rec.StatusMessage)
	}
}

func TestApplyUsesWorkerTime(t *testing.T) {
	rec := recordIn(scheduled, 0)
	u := update(2, running, 0)
	u.Time = timestamppb.New(t0.Add(10 * time.Second))
	Apply(rec, u, now)
	if got := jobstate.Current(rec).StartTime.AsTime(); !got.Equal(t0.Add(10 * time.Second)) {
		t.Errorf("start time = %v, want the worker's time", got)
	}
	if got := rec.UpdateTime.AsTime(); !got.Equal(now) {
		t.Errorf("update time = %v, want ours", got)
	}
}

// TestApplyTerminalAlone: a job that ended within its worker's running
// delay is reported by its terminal update alone; its execution takes the
// start time that update carries, whatever the end.
func TestApplyTerminalAlone(t *testing.T) {
	start, end := t0.Add(10*time.Second), t0.Add(10*time.Second+30*time.Millisecond)
	for _, st := range []jobsv1.JobStatus{completed, failed, canceled} {
		rec := recordIn(scheduled, 0)
		u := update(2, st, 0)
		u.Time, u.StartTime = timestamppb.New(end), timestamppb.New(start)
		if got := Apply(rec, u, now); got != Applied {
			t.Fatalf("%v from SCHEDULED: %v, want applied", st, got)
		}
		cur := jobstate.Current(rec)
		if !cur.GetStartTime().AsTime().Equal(start) || !cur.GetEndTime().AsTime().Equal(end) {
			t.Errorf("%v from SCHEDULED: execution ran %v to %v, want %v to %v", st, cur.GetStartTime().AsTime(), cur.GetEndTime().AsTime(), start, end)
		}
	}
}

// TestTakeStart: an execution the processor ended (a cancel, the deadline)
// before its worker reported RUNNING takes the start and instance the
// worker's report of that attempt carries; nothing else does.
func TestTakeStart(t *testing.T) {
	start := t0.Add(10 * time.Second)
	report := func(attempt int32, st jobsv1.JobStatus) *eventsv1.ExecutionUpdate {
		u := update(attempt, st, 0)
		u.StartTime = timestamppb.New(start)
		return u
	}
	for _, st := range []jobsv1.JobStatus{canceled, completed, running} {
		rec := recordIn(scheduled, 0)
		if Cancel(rec, now) != Applied {
			t.Fatal("cancel not applied")
		}
		if got := Apply(rec, report(2, st), now); got == Applied {
			t.Fatalf("%v after the cancel applied", st)
		}
		if got := TakeStart(rec, report(2, st)); got != Applied {
			t.Fatalf("%v after the cancel: TakeStart %v, want applied", st, got)
		}
		cur := jobstate.Current(rec)
		if !cur.GetStartTime().AsTime().Equal(start) || cur.GetInstanceId() != "i1" || cur.GetStatus() != canceled || rec.Status != canceled {
			t.Errorf("%v after the cancel: execution %v, want CANCELED, started at %v on i1", st, cur, start)
		}
		if got := TakeStart(rec, report(2, st)); got != Ignored {
			t.Errorf("%v again: TakeStart %v, want ignored (the start is known)", st, got)
		}
	}
	for name, c := range map[string]struct {
		rec *jobsv1.Job
		u   *eventsv1.ExecutionUpdate
	}{
		"unfinished":        {recordIn(scheduled, 0), report(2, running)},
		"earlier attempt":   {func() *jobsv1.Job { r := recordIn(scheduled, 0); Cancel(r, now); return r }(), report(1, canceled)},
		"without its start": {func() *jobsv1.Job { r := recordIn(scheduled, 0); Cancel(r, now); return r }(), update(2, canceled, 0)},
	} {
		before := proto.Clone(c.rec)
		if got := TakeStart(c.rec, c.u); got != Ignored || !proto.Equal(before, c.rec) {
			t.Errorf("%s: TakeStart %v, record %v; want ignored, unchanged", name, got, c.rec)
		}
	}
}

// StartTakenFrom tells a report that may have given an ended execution its
// start after its end (TakeStart) from the report that ended it, or one of
// an execution not ended.
func TestStartTakenFrom(t *testing.T) {
	start := t0.Add(10 * time.Second)
	report := func(attempt int32, st jobsv1.JobStatus, at time.Time) *eventsv1.ExecutionUpdate {
		u := update(attempt, st, 0)
		u.StartTime, u.Time = timestamppb.New(start), timestamppb.New(at)
		return u
	}
	canceledEarly := func() *jobsv1.Job { // canceled, then its worker's CANCELED gave the start
		r := recordIn(scheduled, 0)
		Cancel(r, now)
		TakeStart(r, report(2, canceled, now.Add(time.Second)))
		return r
	}
	completedAlone := func() *jobsv1.Job { // its worker's COMPLETED alone ended it
		r := recordIn(scheduled, 0)
		Apply(r, report(2, completed, now), now)
		return r
	}
	failedByWorker := func() *jobsv1.Job { // its worker's FAILED ended it
		r := recordIn(scheduled, 0)
		u := report(2, jobsv1.JobStatus_JOB_STATUS_FAILED, now)
		u.Error = &jobsv1.Problem{Type: problem.TypePrefix + "tool-failed"}
		Apply(r, u, now)
		return r
	}
	otherStart := report(2, canceled, now.Add(time.Second))
	otherStart.StartTime = timestamppb.New(start.Add(time.Millisecond))
	notEnded := recordIn(scheduled, 0)
	Apply(notEnded, report(2, running, start), now)
	for name, c := range map[string]struct {
		rec  *jobsv1.Job
		u    *eventsv1.ExecutionUpdate
		want bool
	}{
		"the report that gave the start": {canceledEarly(), report(2, canceled, now.Add(time.Second)), true},
		"a COMPLETED after the cancel":   {canceledEarly(), report(2, completed, now.Add(time.Second)), true},
		"the report that ended it":       {completedAlone(), report(2, completed, now), false},
		"a RUNNING after its COMPLETED":  {completedAlone(), report(2, running, start), false},
		"a RUNNING after its own FAILED": {failedByWorker(), report(2, running, start), false},
		"another start":                  {canceledEarly(), otherStart, false},
		"an earlier attempt":             {canceledEarly(), report(1, canceled, now.Add(time.Second)), false},
		"not ended":                      {notEnded, report(2, running, now), false},
		"a report without a start":       {canceledEarly(), update(2, canceled, 0), false},
	} {
		if got := StartTakenFrom(c.rec, c.u); got != c.want {
			t.Errorf("%s: %v, want %v", name, got, c.want)
		}
	}
}

func TestNew(t *testing.T) {
	job := &jobsv1.Job{Id: "j1", Tenant: "t", Profile: "P", Status: jobsv1.JobStatus_JOB_STATUS_NEW, CreateTime: timestamppb.New(t0)}
	rec := New(job, now)
	if rec.Status != queued || len(rec.Executions) != 0 || !rec.CreateTime.AsTime().Equal(t0) {
		t.Errorf("New = %v", rec)
	}
	if job.Status != jobsv1.JobStatus_JOB_STATUS_NEW {
		t.Errorf("New changed its argument")
	}
	if rec := New(&jobsv1.Job{Id: "j2"}, now); !rec.CreateTime.AsTime().Equal(now) {
		t.Errorf("create time defaults to %v, want now", rec.CreateTime.AsTime())
	}
}

func TestSchedule(t *testing.T) {
	tests := []struct {
		name        string
		rec         *jobsv1.Job
		want        Outcome
		wantAttempt int32
	}{
		{name: "first attempt", rec: New(&jobsv1.Job{Id: "j1"}, t0), want: Applied, wantAttempt: 1},
		{name: "requeued after a failed attempt", rec: func() *jobsv1.Job {
			r := recordIn(failed, 0)
			r.Status = queued
			return r
		}(), want: Applied, wantAttempt: 3},
		{name: "already scheduled", rec: recordIn(scheduled, 0), want: AlreadyApplied, wantAttempt: 2},
		{name: "running", rec: recordIn(running, 10), want: Ignored, wantAttempt: 2},
		{name: "terminal", rec: recordIn(canceled, 0), want: Ignored, wantAttempt: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Schedule(tt.rec, "svc", now)
			if got != tt.want {
				t.Fatalf("Schedule = %v, want %v", got, tt.want)
			}
			cur := jobstate.Current(tt.rec)
			if cur.GetAttempt() != tt.wantAttempt {
				t.Errorf("attempt = %d, want %d", cur.GetAttempt(), tt.wantAttempt)
			}
			if got == Applied {
				if tt.rec.Status != scheduled || cur.Status != scheduled || cur.Service != "svc" || !cur.DispatchTime.AsTime().Equal(now) {
					t.Errorf("record after Schedule = %v", tt.rec)
				}
				if id := WorkMsgID(tt.rec); id != fmt.Sprintf("work-j1-%d", tt.wantAttempt) {
					t.Errorf("WorkMsgID = %q", id)
				}
			}
		})
	}
}

func TestFail(t *testing.T) {
	p := NoService("P")
	if p.Detail != `no service offers profile "P"` || p.Type != "urn:medius:problem:no-service" {
		t.Fatalf("NoService = %v", p)
	}
	rec := New(&jobsv1.Job{Id: "j1", Profile: "P"}, t0)
	if got := Fail(rec, p, now); got != Applied || rec.Status != failed || !proto.Equal(rec.Error, p) || rec.EndTime == nil {
		t.Fatalf("Fail = %v, record %v", got, rec)
	}
	if got := Fail(rec, p, now); got != AlreadyApplied {
		t.Errorf("second Fail = %v", got)
	}
	done := recordIn(completed, 100)
	if got := Fail(done, p, now); got != Ignored || done.Status != completed {
		t.Errorf("Fail of a completed job = %v, status %v", got, done.Status)
	}
}

func TestCancel(t *testing.T) {
	tests := []struct {
		name string
		rec  *jobsv1.Job
		want Outcome
	}{
		{name: "queued", rec: New(&jobsv1.Job{Id: "j1"}, t0), want: Applied},
		{name: "scheduled", rec: recordIn(scheduled, 0), want: Applied},
		{name: "running", rec: recordIn(running, 30), want: Applied},
		{name: "canceled", rec: recordIn(canceled, 30), want: AlreadyApplied},
		{name: "completed", rec: recordIn(completed, 100), want: Ignored},
		{name: "failed", rec: recordIn(failed, 0), want: Ignored},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.rec.Status
			got := Cancel(tt.rec, now)
			if got != tt.want {
				t.Fatalf("Cancel = %v, want %v", got, tt.want)
			}
			if got == Ignored {
				if tt.rec.Status != before {
					t.Errorf("status moved to %v", tt.rec.Status)
				}
				return
			}
			if tt.rec.Status != canceled {
				t.Errorf("status = %v", tt.rec.Status)
			}
			if cur := jobstate.Current(tt.rec); cur != nil && cur.Status != canceled {
				t.Errorf("execution status = %v", cur.Status)
			}
		})
	}
}

func TestStatusMsgID(t *testing.T) {
	tests := []struct {
		rec  *jobsv1.Job
		want string
	}{
		{New(&jobsv1.Job{Id: "j1"}, t0), "status-j1-1-QUEUED"},
		{recordIn(scheduled, 0), "status-j1-2-SCHEDULED"},
		{recordIn(running, 0), "status-j1-2-RUNNING-0"},
		{recordIn(running, 55), "status-j1-2-RUNNING-55"},
		{recordIn(completed, 100), "status-j1-2-COMPLETED"},
		{func() *jobsv1.Job { r := New(&jobsv1.Job{Id: "j1"}, t0); Fail(r, NoService("P"), now); return r }(), "status-j1-0-FAILED"},
		{failedAt2(), "status-j1-2-FAILED"},
		// Restarted, then failed before attempt 3 was dispatched: not the
		// id of attempt 2's FAILED, which the stream would take for a
		// duplicate of it.
		{func() *jobsv1.Job {
			r := failedAt2()
			Restart(r, 2, now)
			Expire(r, 0, DeadlinePassed(now), now.Add(time.Second))
			return r
		}(), "status-j1-3-FAILED"},
		{func() *jobsv1.Job {
			r := failedAt2()
			Restart(r, 2, now)
			Cancel(r, now.Add(time.Second))
			return r
		}(), "status-j1-3-CANCELED"},
		// Requeued after a lost worker, canceled before the retry; then
		// restarted, its run (attempt 3 too) queued and canceled: ids of
		// their own, not the wait's, which the stream would take for
		// duplicates.
		{func() *jobsv1.Job {
			r := recordIn(running, 10)
			WorkerLost(r, 2, 3, "no heartbeat", now)
			return r
		}(), "status-j1-3-QUEUED-requeued"},
		{func() *jobsv1.Job {
			r := recordIn(running, 10)
			WorkerLost(r, 2, 3, "no heartbeat", now)
			Cancel(r, now.Add(time.Second))
			return r
		}(), "status-j1-3-CANCELED-requeued"},
		{func() *jobsv1.Job {
			r := recordIn(running, 10)
			WorkerLost(r, 2, 3, "no heartbeat", now)
			Cancel(r, now.Add(time.Second))
			Restart(r, 2, now.Add(2*time.Second))
			return r
		}(), "status-j1-3-QUEUED"},
		{func() *jobsv1.Job {
			r := recordIn(running, 10)
			WorkerLost(r, 2, 3, "no heartbeat", now)
			Cancel(r, now.Add(time.Second))
			Restart(r, 2, now.Add(2*time.Second))
			Schedule(r, "probe", now.Add(3*time.Second))
			Cancel(r, now.Add(4*time.Second))
			return r
		}(), "status-j1-3-CANCELED"},
		// Its attempts used up by the loss: the lost attempt's end.
		{func() *jobsv1.Job {
			r := recordIn(running, 10)
			WorkerLost(r, 2, 1, "no heartbeat", now)
			return r
		}(), "status-j1-2-FAILED"},
	}
	for _, tt := range tests {
		if got := StatusMsgID(tt.rec); got != tt.want {
			t.Errorf("StatusMsgID(%v/%d) = %q, want %q", tt.rec.Status, tt.rec.Progress, got, tt.want)
		}
	}
}

// failedAt2 is recordIn's job ended FAILED by its worker at attempt 2.
func failedAt2() *jobsv1.Job {
	rec := recordIn(running, 10)
	if got := Apply(rec, update(2, failed, 10), now); got != Applied {
		panic(fmt.Sprintf("FAILED report %v", got))
	}
	return rec
}

func TestStatusEvent(t *testing.T) {
	rec := recordIn(running, 20)
	ev := jobstate.StatusEvent(rec)
	if ev.JobId != "j1" || ev.Status != running || ev.Progress != 20 || ev.Execution.GetAttempt() != 2 {
		t.Errorf("StatusEvent = %v", ev)
	}
	if ev := jobstate.StatusEvent(New(&jobsv1.Job{Id: "j1"}, t0)); ev.Execution != nil || ev.Status != queued {
		t.Errorf("StatusEvent of a queued job = %v", ev)
	}
	// Waiting for a retry, the job names the attempt that lost its worker,
	// ended: the mediator shows it ended and the job QUEUED.
	lost := recordIn(running, 20)
	if WorkerLost(lost, 2, 3, "no heartbeat", now) != Applied {
		t.Fatal("worker lost not applied")
	}
	if ev := jobstate.StatusEvent(lost); ev.Status != queued || ev.Execution.GetAttempt() != 2 || ev.Execution.GetStatus() != failed ||
		ev.Execution.GetError().GetType() != ProblemWorkerLost {
		t.Errorf("StatusEvent of a job waiting for its retry = %v, want QUEUED naming attempt 2 FAILED worker-lost", ev)
	}
	// A restarted job waits with its new attempt's execution, which has
	// nothing to say before its dispatch.
	restarted := recordIn(failed, 0)
	if Restart(restarted, 2, now) != Applied {
		t.Fatal("restart not applied")
	}
	if ev := jobstate.StatusEvent(restarted); ev.Status != queued || ev.Execution != nil || ev.PreviousExecution != nil {
		t.Errorf("StatusEvent of a restarted job = %v, want QUEUED naming no attempt", ev)
	}
}

// A rerouted job's announcement carries the attempt it moved off, ended,
// beside the new one: no other event names that attempt, and without it
// the mediator's record would keep it SCHEDULED for good. A first attempt
// carries none.
func TestStatusEventReroute(t *testing.T) {
	rec := New(&jobsv1.Job{Id: "j1", Profile: "P"}, t0)
	if Schedule(rec, "gone", t0) != Applied {
		t.Fatal("schedule not applied")
	}
	if ev := jobstate.StatusEvent(rec); ev.Execution.GetAttempt() != 1 || ev.PreviousExecution != nil {
		t.Fatalf("StatusEvent of a first attempt = %v, want attempt 1 and no previous execution", ev)
	}
	if Reroute(rec, 1, "gone", "next", now) != Applied {
		t.Fatal("reroute not applied")
	}
	ev := jobstate.StatusEvent(rec)
	if ev.Status != scheduled || ev.Execution.GetAttempt() != 2 || ev.Execution.GetService() != "next" {
		t.Fatalf("StatusEvent of a rerouted job = %v, want SCHEDULED naming attempt 2 on next", ev)
	}
	prev := ev.GetPreviousExecution()
	if prev.GetAttempt() != 1 || prev.GetService() != "gone" || prev.GetStatus() != failed ||
		prev.GetError().GetType() != ProblemServiceGone || prev.GetEndTime() == nil {
		t.Fatalf("previous execution = %v, want attempt 1 on gone FAILED service-unavailable", prev)
	}
	// The new attempt's later news carries it too, in case the mediator
	// never applies the SCHEDULED (a redelivery overtaken by the RUNNING).
	if Apply(rec, &eventsv1.ExecutionUpdate{JobId: "j1", Attempt: 2, Service: "next", InstanceId: "i1", Status: running,
		Progress: 10, StartTime: timestamppb.New(now)}, now) != Applied {
		t.Fatal("running not applied")
	}
	if ev := jobstate.StatusEvent(rec); ev.Execution.GetAttempt() != 2 || ev.GetPreviousExecution().GetAttempt() != 1 {
		t.Fatalf("StatusEvent of the rerouted job running = %v, want attempt 2 with attempt 1 before it", ev)
	}
}
