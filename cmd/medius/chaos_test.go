package main_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devstack"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
)

// completions follows the completion announcements live (core NATS), to
// time how long the platform takes to complete jobs again after a blow.
type completions struct {
	mu   sync.Mutex
	at   []time.Time
	job  map[string]time.Time
	seen atomic.Int64
}

func (c *completions) add(m *nats.Msg) {
	ev := &eventsv1.JobStatusChanged{}
	if proto.Unmarshal(m.Data, ev) != nil || ev.GetStatus() != jobsv1.JobStatus_JOB_STATUS_COMPLETED {
		return
	}
	c.mu.Lock()
	c.at = append(c.at, time.Now())
	if c.job == nil {
		c.job = map[string]time.Time{}
	}
	c.job[ev.GetJobId()] = time.Now()
	c.mu.Unlock()
	c.seen.Add(1)
}

// after is when the first completion after t was seen (zero if none yet).
func (c *completions) after(t time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, at := range c.at {
		if at.After(t) {
			return at
		}
	}
	return time.Time{}
}

// TestChaos runs 500 Sleep jobs on the four binaries as separate processes
// (two workers, two processor replicas) while it kill -9s a worker mid-job,
// kills and restarts a processor, kills and restarts the mediator, and
// restarts NATS. Every job must end, each COMPLETED exactly once as the
// announcements on the stream show, none left RUNNING.
func TestChaos(t *testing.T) {
	const jobs = 500
	l := startLab(t, devstack.Config{
		Workers:    2,
		Processors: 2,
		Args: map[string][]string{
			"job-processor": {"--heartbeat-timeout", "5s", "--retry-backoff", "500ms"},
			"job-worker":    {"--capacity", "8"},
		},
	})
	nc, _, err := bus.Connect(l.stack.NATS.URL, "chaos-test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var done completions
	if _, err := nc.Subscribe(bus.SubjectJobStatusAll, done.add); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// Jobs are submitted while the blows land. A submit the mediator's
	// death interrupts is repeated with the same request id, as a client
	// would: it must create the job once.
	start := time.Now()
	ids := make([]string, jobs)
	var submitted errgroup.Group
	submitted.SetLimit(8)
	// Wait may only start once every Go has been called (a WaitGroup
	// cannot be reused while Wait runs), so the feeder says when it is done.
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		for i := range jobs {
			submitted.Go(func() error {
				req := &jobsv1.CreateJobRequest{RequestId: fmt.Sprintf("chaos-%d", i), Job: sleepJob(0.2 + 1.8*rand.Float64())}
				for giveUp := time.Now().Add(2 * time.Minute); ; {
					job, err := l.jobs.CreateJob(authed(context.Background()), req)
					if err == nil {
						ids[i] = job.GetId()
						return nil
					}
					if time.Now().After(giveUp) {
						return fmt.Errorf("submit job %d: %w", i, err)
					}
					time.Sleep(100 * time.Millisecond)
				}
			})
		}
	}()

	type blow struct {
		name string
		at   time.Time
	}
	var blows []blow
	hit := func(name string, f func() error) {
		t.Helper()
		at := time.Now()
		if err := f(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		blows = append(blows, blow{name, at})
		t.Logf("%s at +%s (%d completions so far)", name, at.Sub(start).Round(time.Millisecond), done.seen.Load())
	}
	waitFor(t, "first completions", func() bool { return done.seen.Load() >= 20 })
	worker := l.stack.Process("job-worker-1")
	hit("kill -9 job-worker-1 mid-job", func() error { worker.Kill(); return nil })
	time.Sleep(4 * time.Second) // let the blows land apart, not a synchronisation
	hit("kill -9 job-processor-1", func() error {
		p := l.stack.Process("job-processor-1")
		p.Kill()
		time.Sleep(time.Second)
		return p.Restart(context.Background())
	})
	hit("restart job-worker-1", func() error { return worker.Restart(context.Background()) })
	time.Sleep(3 * time.Second)
	hit("kill -9 mediator", func() error {
		p := l.stack.Process("mediator")
		p.Kill()
		time.Sleep(time.Second)
		return p.Restart(context.Background())
	})
	time.Sleep(3 * time.Second)
	hit("restart NATS", l.stack.NATS.Restart)
	<-fed
	if err := submitted.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d jobs submitted in %s", jobs, time.Since(start).Round(time.Millisecond))

	// Every job reaches a terminal state.
	pending := map[string]bool{}
	for _, id := range ids {
		pending[id] = true
	}
	final := map[string]*jobsv1.Job{}
	deadline := time.Now().Add(3 * time.Minute)
	for len(pending) > 0 {
		for id := range pending {
			job, err := l.jobs.GetJob(authed(context.Background()), &jobsv1.GetJobRequest{Id: id})
			if err != nil {
				break // the mediator or NATS is still coming back
			}
			if jobstate.IsTerminal(job.GetStatus()) {
				final[id] = job
				delete(pending, id)
			}
		}
		if len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			counts := map[string]int{}
			for id := range pending {
				job, err := l.jobs.GetJob(authed(context.Background()), &jobsv1.GetJobRequest{Id: id})
				counts[jobstate.Name(job.GetStatus())+fmt.Sprint(err != nil)]++
			}
			t.Fatalf("%d jobs not terminal 3 min after the last blow: %v", len(pending), counts)
		}
		time.Sleep(500 * time.Millisecond)
	}
	total := time.Since(start)

	for _, b := range blows {
		if next := done.after(b.at); !next.IsZero() {
			t.Logf("recovery: first completion %s after %q", next.Sub(b.at).Round(time.Millisecond), b.name)
		} else {
			t.Errorf("no completion after %q", b.name) // every job completes, after the blows
		}
	}
	t.Logf("all %d jobs terminal %s after the first submit, %s after the last blow", jobs, total.Round(time.Millisecond),
		time.Since(blows[len(blows)-1].at).Round(time.Millisecond))

	// Count the completion announcements on the stream: exactly one per job.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	completedEvents, retried := l.announcements(t, js)
	// The killed worker's jobs: lost, retried elsewhere, completed.
	var lastRetried time.Time
	done.mu.Lock()
	for id := range retried {
		if at := done.job[id]; at.After(lastRetried) {
			lastRetried = at
		}
	}
	done.mu.Unlock()
	if !lastRetried.IsZero() {
		t.Logf("recovery: the last of %d retried jobs completed %s after the worker was killed", len(retried),
			lastRetried.Sub(blows[0].at).Round(time.Millisecond))
	}
	byStatus := map[string]int{}
	for id, job := range final {
		byStatus[jobstate.Name(job.GetStatus())]++
		n := completedEvents[id]
		switch {
		case job.GetStatus() == jobsv1.JobStatus_JOB_STATUS_COMPLETED && n != 1:
			t.Errorf("job %s COMPLETED with %d completion announcements, want exactly 1", id, n)
		case job.GetStatus() != jobsv1.JobStatus_JOB_STATUS_COMPLETED && n != 0:
			t.Errorf("job %s %s but announced COMPLETED %d times", id, jobstate.Name(job.GetStatus()), n)
		}
		if job.GetStatus() != jobsv1.JobStatus_JOB_STATUS_COMPLETED {
			t.Errorf("job %s ended %s: %v", id, jobstate.Name(job.GetStatus()), job.GetError())
		}
	}
	t.Logf("final statuses %v; %d jobs needed more than one attempt", byStatus, len(retried))
}

// announcements reads every JobStatusChanged on the events stream and
// counts the COMPLETED ones per job, and the jobs that had a second attempt.
func (l *lab) announcements(t *testing.T, js jetstream.JetStream) (map[string]int, map[string]bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.SubjectJobStatusAll}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	left := info.NumPending
	completed := map[string]int{}
	retried := map[string]bool{}
	for left > 0 {
		batch, err := cons.Fetch(int(min(left, 1000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			ev := &eventsv1.JobStatusChanged{}
			if err := proto.Unmarshal(m.Data(), ev); err != nil {
				t.Fatal(err)
			}
			if ev.GetStatus() == jobsv1.JobStatus_JOB_STATUS_COMPLETED {
				completed[ev.GetJobId()]++
			}
			if ev.GetExecution().GetAttempt() > 1 {
				retried[ev.GetJobId()] = true
			}
		}
		if batch.Error() != nil {
			t.Fatal(batch.Error())
		}
		if got == 0 {
			t.Fatalf("stream read stalled with %d announcements left", left)
		}
		left -= uint64(got)
	}
	return completed, retried
}
