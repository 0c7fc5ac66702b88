package record

import (
	"strings"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/jobstate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// lostRun is a job whose first attempt is RUNNING on instance i1.
func lostRun() *jobsv1.Job {
	return &jobsv1.Job{Id: "j1", Tenant: "t", Profile: "P", Status: running, CreateTime: timestamppb.New(t0),
		Executions: []*jobsv1.Execution{{Attempt: 1, Service: "svc", InstanceId: "i1", Status: running, DispatchTime: timestamppb.New(t0)}}}
}

// redispatch schedules and starts the next attempt, as the processor does
// for a requeued job.
func redispatch(t *testing.T, rec *jobsv1.Job, at time.Time) {
	t.Helper()
	if got := Schedule(rec, "svc", at); got != Applied {
		t.Fatalf("Schedule = %v", got)
	}
	if got := Apply(rec, update(jobstate.Current(rec).GetAttempt(), running, 0), at); got != Applied {
		t.Fatalf("Apply RUNNING = %v", got)
	}
}

func TestWorkerLostRetriesThenFails(t *testing.T) {
	rec := lostRun()
	at := now
	for attempt := int32(1); attempt <= 3; attempt++ {
		if got := WorkerLost(rec, attempt, 3, "no heartbeat", at); got != Applied {
			t.Fatalf("attempt %d: WorkerLost = %v", attempt, got)
		}
		lost := rec.Executions[attempt-1]
		if lost.GetStatus() != failed || lost.GetError().GetType() != ProblemWorkerLost || !lost.GetEndTime().AsTime().Equal(at) {
			t.Fatalf("attempt %d: lost execution = %v", attempt, lost)
		}
		if attempt < 3 {
			if rec.GetStatus() != queued {
				t.Fatalf("attempt %d: job %v, want QUEUED for a retry", attempt, rec.GetStatus())
			}
			// Backoff doubles: 1s after the first loss, 2s after the second.
			if want := at.Add(time.Second << (attempt - 1)); !RetryAt(rec, time.Second).Equal(want) {
				t.Fatalf("attempt %d: RetryAt = %v, want %v", attempt, RetryAt(rec, time.Second), want)
			}
			if StatusAttempt(rec) != attempt+1 {
				t.Fatalf("QUEUED status belongs to attempt %d, want %d", StatusAttempt(rec), attempt+1)
			}
			at = at.Add(10 * time.Second)
			redispatch(t, rec, at)
		}
	}
	if rec.GetStatus() != failed || rec.GetError().GetType() != ProblemWorkerLost || !strings.Contains(rec.GetError().GetDetail(), "3 attempts") {
		t.Fatalf("after 3 losses: %v %v", rec.GetStatus(), rec.GetError())
	}
	// A late loss, or one of an old attempt, changes nothing.
	if got := WorkerLost(rec, 3, 3, "again", at); got != Ignored {
		t.Fatalf("loss of a terminal job = %v", got)
	}
	// A restart counts attempts afresh: one loss is retried again.
	if got := Restart(rec, 3, at); got != Applied {
		t.Fatalf("Restart = %v", got)
	}
	redispatch(t, rec, at)
	if got := WorkerLost(rec, 4, 3, "no heartbeat", at); got != Applied || rec.GetStatus() != queued {
		t.Fatalf("loss after restart: %v, job %v", got, rec.GetStatus())
	}
}

// A restart counts lost attempts afresh however the run before it ended:
// here canceled while it waited for the retry of a lost attempt, not with
// its attempts exhausted. With two attempts allowed, the restarted run's
// first loss is retried, and its backoff starts from the base again.
func TestRestartCountsLossesAfresh(t *testing.T) {
	rec := lostRun()
	if got := WorkerLost(rec, 1, 2, "no heartbeat", now); got != Applied || rec.GetStatus() != queued {
		t.Fatalf("first loss: %v, job %v", got, rec.GetStatus())
	}
	if got := Cancel(rec, now); got != Applied {
		t.Fatalf("cancel while waiting for the retry = %v", got)
	}
	if got := Restart(rec, 1, now); got != Applied {
		t.Fatalf("Restart = %v", got)
	}
	at := now.Add(time.Minute)
	redispatch(t, rec, at)
	if got := WorkerLost(rec, 2, 2, "no heartbeat", at); got != Applied || rec.GetStatus() != queued {
		t.Fatalf("the restarted run's first loss: %v, job %v (%s), want QUEUED for a retry", got, rec.GetStatus(), rec.GetError().GetDetail())
	}
	if want := at.Add(time.Second); !RetryAt(rec, time.Second).Equal(want) {
		t.Fatalf("RetryAt = %v, want the base backoff %v", RetryAt(rec, time.Second), want)
	}
	// Its second loss exhausts its own two attempts.
	redispatch(t, rec, at)
	if got := WorkerLost(rec, 3, 2, "no heartbeat", at); got != Applied || rec.GetStatus() != failed {
		t.Fatalf("the restarted run's second loss: %v, job %v, want FAILED", got, rec.GetStatus())
	}
}

func TestWorkerLostIgnored(t *testing.T) {
	for name, c := range map[string]struct {
		rec     *jobsv1.Job
		attempt int32
	}{
		"older attempt":    {recordIn(running, 10), 1},
		"completed":        {recordIn(completed, 100), 2},
		"canceled":         {recordIn(canceled, 0), 2},
		"no execution yet": {&jobsv1.Job{Id: "j1", Status: queued}, 1},
	} {
		t.Run(name, func(t *testing.T) {
			if got := WorkerLost(c.rec, c.attempt, 3, "x", now); got != Ignored {
				t.Fatalf("WorkerLost = %v, want ignored", got)
			}
		})
	}
	// maxAttempts 1: the first loss fails the job.
	rec := lostRun()
	if got := WorkerLost(rec, 1, 1, "x", now); got != Applied || rec.GetStatus() != failed {
		t.Fatalf("max 1: %v %v", got, rec.GetStatus())
	}
}

func TestExpire(t *testing.T) {
	rec := recordIn(running, 40)
	p := TimeoutPassed(time.Minute)
	if got := Expire(rec, 0, p, now); got != Applied {
		t.Fatalf("Expire = %v", got)
	}
	if rec.GetStatus() != failed || rec.GetError().GetType() != ProblemTimeout || jobstate.Current(rec).GetStatus() != failed {
		t.Fatalf("after timeout: %v %v, execution %v", rec.GetStatus(), rec.GetError(), jobstate.Current(rec).GetStatus())
	}
	if got := Expire(rec, 0, p, now); got != AlreadyApplied {
		t.Fatalf("repeat = %v", got)
	}
	// A late COMPLETED of the expired attempt does not move it.
	if got := Apply(rec, update(2, completed, 100), now); got != Ignored {
		t.Fatalf("completion after expiry = %v", got)
	}
	done := recordIn(completed, 100)
	if got := Expire(done, 0, DeadlinePassed(now), now); got != Ignored || done.GetStatus() != completed {
		t.Fatalf("expire completed = %v", got)
	}
}

func TestRestart(t *testing.T) {
	tests := []struct {
		name     string
		rec      *jobsv1.Job
		attempts int32
		want     Outcome
	}{
		{"failed", recordIn(failed, 0), 2, Applied},
		{"canceled", recordIn(canceled, 0), 2, Applied},
		{"completed", recordIn(completed, 100), 2, Ignored},
		{"running", recordIn(running, 10), 2, AlreadyApplied},
		{"queued", recordIn(queued, 0), 2, AlreadyApplied},
		{"already restarted and failed again", recordIn(failed, 0), 1, Ignored},
		{"unknown later attempts", recordIn(failed, 0), 5, Ignored},
		{"canceled before any attempt", &jobsv1.Job{Id: "j1", Status: canceled}, 0, Applied},
		// Restarted by a processor that added no execution, not ended yet.
		{"queued by an older restart", &jobsv1.Job{Id: "j1", Status: queued, Executions: recordIn(failed, 0).Executions}, 2, AlreadyApplied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.rec.Error = &jobsv1.Problem{Type: "x"}
			if got := Restart(tt.rec, tt.attempts, now); got != tt.want {
				t.Fatalf("Restart = %v, want %v", got, tt.want)
			}
			if tt.want == Applied {
				if tt.rec.GetStatus() != queued || tt.rec.GetError() != nil || tt.rec.GetEndTime() != nil {
					t.Fatalf("restarted record: %v", tt.rec)
				}
				if NextAttempt(tt.rec) != tt.attempts+1 {
					t.Fatalf("next attempt %d, want %d", NextAttempt(tt.rec), tt.attempts+1)
				}
				// The restart's execution is there at once, waiting.
				if cur := jobstate.Current(tt.rec); len(tt.rec.GetExecutions()) != int(tt.attempts)+1 || cur.GetAttempt() != tt.attempts+1 ||
					cur.GetStatus() != queued || cur.GetService() != "" || cur.GetDispatchTime() != nil {
					t.Fatalf("restart's execution: %v", tt.rec.GetExecutions())
				}
			}
		})
	}
}

func TestHeartbeatKeepsStatusMessage(t *testing.T) {
	rec := recordIn(running, 10)
	rec.StatusMessage = "transcoding"
	u := update(2, running, 20)
	u.Message = HeartbeatMessage
	if got := Apply(rec, u, now); got != Applied || rec.GetStatusMessage() != "transcoding" {
		t.Fatalf("heartbeat: %v, message %q", got, rec.GetStatusMessage())
	}
}

func TestBeat(t *testing.T) {
	rec := recordIn(running, 10)
	rec.UpdateTime = timestamppb.New(now)
	hb := update(2, running, 10)
	if got := Beat(rec, hb, now.Add(time.Second), 2*time.Second); got != AlreadyApplied {
		t.Fatalf("beat within the gap = %v", got)
	}
	if got := Beat(rec, hb, now.Add(3*time.Second), 2*time.Second); got != Applied || !rec.GetUpdateTime().AsTime().Equal(now.Add(3*time.Second)) {
		t.Fatalf("beat after the gap = %v, update_time %v", got, rec.GetUpdateTime().AsTime())
	}
	for name, c := range map[string]struct {
		rec *jobsv1.Job
		u   *eventsv1.ExecutionUpdate
	}{
		"older attempt": {recordIn(running, 10), update(1, running, 10)},
		"scheduled":     {recordIn(scheduled, 0), update(2, running, 0)},
		"completed":     {recordIn(completed, 100), update(2, running, 10)},
	} {
		if got := Beat(c.rec, c.u, now.Add(time.Hour), time.Second); got != Ignored {
			t.Errorf("%s: Beat = %v, want ignored", name, got)
		}
	}
}

func TestReroute(t *testing.T) {
	waiting := func() *jobsv1.Job {
		return &jobsv1.Job{Id: "j1", Status: scheduled, Executions: []*jobsv1.Execution{
			{Attempt: 1, Service: "gone", Status: scheduled, DispatchTime: timestamppb.New(t0)}}}
	}
	rec := waiting()
	if got := Reroute(rec, 1, "gone", "next", now); got != Applied {
		t.Fatalf("Reroute = %v", got)
	}
	old, cur := rec.Executions[0], jobstate.Current(rec)
	if old.GetStatus() != failed || old.GetError().GetType() != ProblemServiceGone || old.GetEndTime() == nil {
		t.Fatalf("moved execution = %v", old)
	}
	if cur.GetAttempt() != 2 || cur.GetService() != "next" || cur.GetStatus() != scheduled || rec.GetStatus() != scheduled {
		t.Fatalf("new execution = %v, job %v", cur, rec.GetStatus())
	}
	// A reroute is no lost attempt: the attempt limit still counts losses only.
	if n := LostInARow(rec); n != 0 {
		t.Fatalf("lost in a row after a reroute = %d", n)
	}

	// Refused: a repeat (attempt 1 is over), another service's attempt,
	// an attempt a worker started, a job no longer waiting.
	if got := Reroute(rec, 1, "gone", "next", now); got != Ignored {
		t.Fatalf("repeat = %v", got)
	}
	if got := Reroute(waiting(), 1, "other", "next", now); got != Ignored {
		t.Fatalf("other service = %v", got)
	}
	started := waiting()
	started.Executions[0].StartTime = timestamppb.New(t0)
	if got := Reroute(started, 1, "gone", "next", now); got != Ignored {
		t.Fatalf("started attempt = %v", got)
	}
	run := lostRun()
	if got := Reroute(run, 1, "svc", "next", now); got != Ignored {
		t.Fatalf("running job = %v", got)
	}
}

// Each restart request applies once, however its run ends: its message,
// retried while no service could take the job, must not bring back a job
// that ended before it was dispatched (canceled, past its deadline, no
// service), and the mediator's next request names the count after it.
func TestRestartAppliesOncePerRequest(t *testing.T) {
	ends := map[string]func(*jobsv1.Job, time.Time) Outcome{
		"canceled while queued": Cancel,
		"deadline while queued": func(r *jobsv1.Job, at time.Time) Outcome { return Expire(r, 0, DeadlinePassed(at), at) },
		"no service":            func(r *jobsv1.Job, at time.Time) Outcome { return Fail(r, NoService("P"), at) },
	}
	for name, end := range ends {
		t.Run(name, func(t *testing.T) {
			for _, first := range []*jobsv1.Job{recordIn(failed, 0), {Id: "j1", Status: failed}} {
				rec, n := first, int32(len(first.GetExecutions()))
				if got := Restart(rec, n, now); got != Applied {
					t.Fatalf("Restart = %v", got)
				}
				if got := Restart(rec, n, now); got != AlreadyApplied {
					t.Fatalf("the same request again while queued = %v, want already applied", got)
				}
				if got := end(rec, now.Add(time.Second)); got != Applied {
					t.Fatalf("end = %v", got)
				}
				cur := jobstate.Current(rec)
				if len(rec.GetExecutions()) != int(n)+1 || !jobstate.IsTerminal(cur.GetStatus()) || cur.GetDispatchTime() != nil ||
					!proto.Equal(cur.GetEndTime(), rec.GetEndTime()) {
					t.Fatalf("ended before dispatch: %v", rec)
				}
				before := proto.CloneOf(rec)
				if got := Restart(rec, n, now.Add(2*time.Second)); got != Ignored || !proto.Equal(rec, before) {
					t.Fatalf("the same request after the end = %v, record %v; want ignored, unchanged", got, rec)
				}
				if got := Restart(rec, n+1, now.Add(2*time.Second)); got != Applied || NextAttempt(rec) != n+2 {
					t.Fatalf("the next request = %v, next attempt %d; want applied, attempt %d", got, NextAttempt(rec), n+2)
				}
			}
		})
	}
}

// The execution a restart added is the one its dispatch fills in, and no
// report moves it before: no worker was handed it.
func TestScheduleFillsRestartsExecution(t *testing.T) {
	rec := recordIn(failed, 0)
	if got := Restart(rec, 2, now); got != Applied {
		t.Fatalf("Restart = %v", got)
	}
	if got := Apply(rec, update(3, running, 0), now); got != Ignored {
		t.Fatalf("report of the undispatched attempt = %v, want ignored", got)
	}
	at := now.Add(time.Second)
	if got := Schedule(rec, "svc2", at); got != Applied {
		t.Fatalf("Schedule = %v", got)
	}
	cur := jobstate.Current(rec)
	if len(rec.GetExecutions()) != 3 || cur.GetAttempt() != 3 || cur.GetService() != "svc2" || cur.GetStatus() != scheduled ||
		!cur.GetDispatchTime().AsTime().Equal(at) || rec.GetStatus() != scheduled || WorkMsgID(rec) != "work-j1-3" {
		t.Fatalf("scheduled restart: %v", rec)
	}
	if got := Apply(rec, update(3, running, 0), at); got != Applied {
		t.Fatalf("report of the dispatched attempt = %v", got)
	}
}

// The queue timeout counts from when the job was queued this time: its
// creation, its restart, or the end of a retry's backoff (not the loss,
// nor the creation of a job that ran long).
func TestQueuedSince(t *testing.T) {
	created := &jobsv1.Job{Id: "j1", CreateTime: timestamppb.New(t0)}
	New(created, now)
	if got := QueuedSince(created, time.Second); !got.Equal(t0) {
		t.Errorf("first run queued since %v, want its creation %v", got, t0)
	}

	restartAt := now.Add(time.Hour)
	restarted := recordIn(failed, 0)
	if got := Restart(restarted, 2, restartAt); got != Applied {
		t.Fatalf("Restart = %v", got)
	}
	if got := QueuedSince(restarted, time.Second); !got.Equal(restartAt) {
		t.Errorf("restarted job queued since %v, want its restart %v", got, restartAt)
	}

	lostAt := now.Add(time.Hour)
	retry := lostRun()
	if got := WorkerLost(retry, 1, 3, "no heartbeat", lostAt); got != Applied {
		t.Fatalf("WorkerLost = %v", got)
	}
	if got, want := QueuedSince(retry, time.Second), lostAt.Add(time.Second); !got.Equal(want) {
		t.Errorf("retry queued since %v, want the end of its backoff %v", got, want)
	}
}

func TestRestartedAfter(t *testing.T) {
	ex := func(attempt int32, restarted bool) *jobsv1.Execution {
		return &jobsv1.Execution{Attempt: attempt, Status: failed, Restarted: restarted}
	}
	rec := &jobsv1.Job{Executions: []*jobsv1.Execution{ex(1, false), ex(2, false), ex(3, true), ex(4, false)}}
	// Canceled while queued (no attempt), then restarted: the restart is
	// attempt 1.
	queuedThenRestarted := &jobsv1.Job{Executions: []*jobsv1.Execution{ex(1, true)}}
	dispatched := &jobsv1.Job{Executions: []*jobsv1.Execution{ex(1, false)}}
	for _, tt := range []struct {
		rec      *jobsv1.Job
		attempts int32
		known    bool
		want     bool
	}{
		{rec, 0, false, false}, // an older mediator's cancel names no attempt
		{rec, 0, true, true},   // asked before any dispatch: attempt 3 restarted the job after it
		{rec, 1, true, true},   // attempt 3 restarted the job after it
		{rec, 2, false, true},  // older mediators set a count above 0 all the same
		{rec, 3, true, false},  // attempt 4 is a retry of the run the cancel names
		{rec, 4, true, false},
		{queuedThenRestarted, 0, true, true},
		{queuedThenRestarted, 0, false, false},
		{dispatched, 0, true, false}, // its first dispatch, not a restart: the cancel's run
	} {
		ev := &eventsv1.JobCancelRequested{Attempts: tt.attempts, AttemptsKnown: tt.known}
		if got := RestartedAfter(tt.rec, ev); got != tt.want {
			t.Errorf("RestartedAfter(%d executions, attempts %d, known %v) = %v, want %v", len(tt.rec.GetExecutions()), tt.attempts, tt.known, got, tt.want)
		}
	}
}
