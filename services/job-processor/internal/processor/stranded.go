package processor

import (
	"context"
	"errors"
	"fmt"
	"github.com/medius-platform/medius/pkg/jobstate"
	"log/slog"
	"slices"
	"strings"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/services/job-processor/internal/record"
	"github.com/medius-platform/medius/services/job-processor/internal/selection"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Stranded work: a job dispatched to a service waits in that service's queue
// until one of its instances takes it. Should every instance vanish, the job
// would wait for the service to come back while another service offering
// its profile could run it. Each replica looks at the work consumers every
// HeartbeatTimeout: a queue with items waiting, none held by a worker and no
// worker asking for more, on two looks in a row, is suspect; each of its
// jobs whose service the registry no longer lists as a candidate moves to
// the best candidate left (record.Reroute, a compare-and-set, so replicas
// looking at once move a job once). With no candidate left, the job waits.

// strandedLooks is how many looks in a row a queue must seem abandoned: a
// live worker between two fetches can look idle once.
const strandedLooks = 2

// watchStranded looks for abandoned queues until ctx ends.
func (p *Processor) watchStranded(ctx context.Context) {
	t := time.NewTicker(p.cfg.HeartbeatTimeout)
	defer t.Stop()
	suspect := map[string]int{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		idle, err := p.abandonedQueues(ctx)
		if err != nil {
			slog.DebugContext(ctx, "look for stranded work", "err", err)
			continue
		}
		for service := range suspect {
			if !slices.Contains(idle, service) {
				delete(suspect, service)
			}
		}
		for _, service := range idle {
			if suspect[service]++; suspect[service] < strandedLooks {
				continue
			}
			if n, err := p.rerouteQueue(ctx, service); err != nil {
				slog.WarnContext(ctx, "reroute stranded work", "service", service, "err", err)
			} else if n > 0 {
				slog.WarnContext(ctx, "stranded jobs moved to another service", "from", service, "jobs", n)
			}
		}
	}
}

// abandonedQueues lists the services whose queue holds items that no worker
// holds or asks for.
func (p *Processor) abandonedQueues(ctx context.Context) ([]string, error) {
	var out []string
	list := p.work.ListConsumers(ctx)
	for ci := range list.Info() {
		service, ok := bus.WorkService(ci.Config.FilterSubject)
		if !ok || ci.Config.FilterSubject != bus.WorkQueue(service) {
			continue
		}
		if ci.NumPending > 0 && ci.NumAckPending == 0 && ci.NumWaiting == 0 {
			out = append(out, service)
		}
	}
	if err := list.Err(); err != nil {
		return nil, fmt.Errorf("list work consumers: %w", err)
	}
	return out, nil
}

// rerouteQueue moves the jobs waiting in service's queue to another service
// when service is no longer a candidate for them, and returns how many moved.
func (p *Processor) rerouteQueue(ctx context.Context, service string) (int, error) {
	info, err := p.work.Info(ctx, jetstream.WithSubjectFilter(bus.WorkQueue(service)))
	if err != nil {
		return 0, fmt.Errorf("list queue of %s: %w", service, err)
	}
	moved := 0
	for subject := range info.State.Subjects {
		id := subject[strings.LastIndexByte(subject, '.')+1:]
		ok, err := p.reroute(ctx, service, id)
		if err != nil {
			return moved, err
		}
		if ok {
			moved++
		}
	}
	return moved, nil
}

// reroute moves job id from service to the best candidate if service can no
// longer take it and no worker started it; it reports whether it did.
func (p *Processor) reroute(ctx context.Context, service, id string) (bool, error) {
	rec, _, err := p.store.get(ctx, id)
	if err != nil || rec == nil {
		return false, err
	}
	cur := jobstate.Current(rec)
	if cur.GetService() != service {
		// This item is stale: the job moved on, and an earlier reroute
		// stopped half-way.
		return false, p.completeMove(ctx, rec, service)
	}
	if rec.GetStatus() != jobsv1.JobStatus_JOB_STATUS_SCHEDULED || cur.GetStartTime() != nil {
		return false, nil
	}
	cands, err := p.cfg.Selector.Candidates(ctx, selection.Request{Profile: rec.GetProfile(), Region: rec.GetRegion()})
	if err != nil {
		return false, err
	}
	if len(cands) == 0 || slices.ContainsFunc(cands, func(c selection.Candidate) bool { return c.Service == service }) {
		return false, nil // still served, or nowhere else to go
	}
	to := cands[0]
	attempt := cur.GetAttempt()
	rec, outcome, err := p.store.update(ctx, id, func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error) {
		if rec == nil {
			return nil, record.Ignored, nil
		}
		return rec, record.Reroute(rec, attempt, service, to.Service, p.cfg.Now()), nil
	})
	if err != nil || outcome != record.Applied {
		return false, err
	}
	slog.InfoContext(ctx, "job moved to another service", "job_id", id, "from", service, "to", to.Service, "attempt", jobstate.Current(rec).GetAttempt())
	return true, p.completeMove(ctx, rec, service)
}

// completeMove sends the work item of rec's current execution and its
// SCHEDULED (ensureWork) and only then withdraws the stale one from
// service, so that a failure half-way leaves the stale item for the next
// look to finish the move.
func (p *Processor) completeMove(ctx context.Context, rec *jobsv1.Job, service string) error {
	if err := p.ensureWork(ctx, rec); err != nil {
		return err
	}
	return p.withdrawWork(ctx, service, rec.GetId())
}

// ensureWork sends the work item of rec's current execution, SCHEDULED and
// not started, unless its service's queue holds it already or its worker has
// reported on it, and announces SCHEDULED when it sends or finds it. The
// queue and the reports are looked at rather than the item sent again
// blindly: past the work stream's duplicate window a second item would run
// the attempt twice.
//
// A worker acks its item after its last report. Until the processor has
// handled that report, the report is what moves the job on: ensureWork asks
// to be called again (bus.RetryAfter). Once handled, a job still SCHEDULED
// shows the report could not apply (it came long before the record and was
// dropped), and the item goes again: run twice rather than never end.
func (p *Processor) ensureWork(ctx context.Context, rec *jobsv1.Job) error {
	cur := jobstate.Current(rec)
	if rec.GetStatus() != jobsv1.JobStatus_JOB_STATUS_SCHEDULED || cur.GetStartTime() != nil {
		return nil
	}
	var queued eventsv1.WorkItem
	if _, ok, err := lastMsg(ctx, p.work, bus.SubjectWork(cur.GetService(), rec.GetId()), &queued); err != nil {
		return fmt.Errorf("look for the work item of job %s: %w", rec.GetId(), err)
	} else if ok && queued.GetAttempt() == cur.GetAttempt() {
		// The item went out with its SCHEDULED in one round trip, as
		// separate publishes: the announcement may be what failed.
		// Again, under its msg id (stored once).
		return p.announce(ctx, rec)
	}
	var report eventsv1.ExecutionUpdate
	seq, ok, err := lastMsg(ctx, p.events, bus.SubjectExecution(rec.GetId()), &report)
	ok = ok && report.GetAttempt() == cur.GetAttempt()
	if err == nil && seq > 0 && !ok {
		// The last report is another attempt's: the worker of a lost one,
		// cut off but alive, still heartbeats, and may have done so after
		// this attempt's worker reported. So the job's reports are looked
		// through.
		seq, ok, err = p.lastReportOf(ctx, rec.GetId(), cur)
	}
	if err != nil {
		return fmt.Errorf("look for the reports of job %s: %w", rec.GetId(), err)
	}
	if ok {
		handled, err := p.reportHandled(ctx, seq)
		if err != nil {
			return err
		}
		if !handled {
			return bus.RetryAfter(reportRecheck, fmt.Errorf("job %s: attempt %d was reported on; waiting for the report to apply", rec.GetId(), cur.GetAttempt()))
		}
		fresh, _, err := p.store.get(ctx, rec.GetId())
		if err != nil {
			return err
		}
		if c := jobstate.Current(fresh); fresh.GetStatus() != jobsv1.JobStatus_JOB_STATUS_SCHEDULED || c.GetAttempt() != cur.GetAttempt() || c.GetStartTime() != nil {
			return nil // the report moved it on
		}
	}
	return p.sendWork(ctx, rec)
}

// lastMsg reads the last message stream holds on subject into m, and its
// stream sequence; false if there is none, or it does not decode as m.
func lastMsg(ctx context.Context, stream jetstream.Stream, subject string, m proto.Message) (uint64, bool, error) {
	raw, err := stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return raw.Sequence, proto.Unmarshal(raw.Data, m) == nil, nil
}

// reportClockMargin is how long before an attempt's dispatch its reports are
// first looked for: the dispatch is dated by this process's clock, a report
// by the NATS server's.
const reportClockMargin = time.Minute

// lastReportOf returns the stream sequence of the last report of attempt cur
// of job id; false if there is none. It looks at the reports stored since
// cur's dispatch (less reportClockMargin) first, and, finding none of cur's
// there, at all of the job's: a clock further ahead would miss the report,
// and sending the item again on that runs the attempt twice. Only a job with
// a lost attempt whose worker still reports gets here.
func (p *Processor) lastReportOf(ctx context.Context, id string, cur *jobsv1.Execution) (uint64, bool, error) {
	if d := cur.GetDispatchTime(); d != nil {
		// Should this read fail, the full one decides (a time the server
		// cannot take fails it, while a NATS outage fails both).
		since := d.AsTime().Add(-reportClockMargin)
		if seq, ok, err := p.scanReports(ctx, id, cur.GetAttempt(), &since); err == nil && ok {
			return seq, ok, nil
		}
	}
	return p.scanReports(ctx, id, cur.GetAttempt(), nil)
}

// scanReports reads job id's reports stored since since (nil: all of them)
// through a consumer of its own, made and deleted for the purpose (a round
// trip per 256 reports, and two more), and returns the stream sequence of
// the last of attempt's.
func (p *Processor) scanReports(ctx context.Context, id string, attempt int32, since *time.Time) (uint64, bool, error) {
	cfg := jetstream.ConsumerConfig{FilterSubject: bus.SubjectExecution(id),
		AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, InactiveThreshold: time.Minute}
	if since != nil {
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, since
	}
	c, err := p.events.CreateConsumer(ctx, cfg)
	if err != nil {
		return 0, false, fmt.Errorf("read the reports of job %s: %w", id, err)
	}
	defer func() {
		// Should this fail, the server deletes it once inactive.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = p.events.DeleteConsumer(dctx, c.CachedInfo().Name)
	}()
	var last uint64
	for {
		batch, err := c.FetchNoWait(256)
		if err != nil {
			return 0, false, fmt.Errorf("read the reports of job %s: %w", id, err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			var u eventsv1.ExecutionUpdate
			if proto.Unmarshal(msg.Data(), &u) != nil || u.GetAttempt() != attempt {
				continue
			}
			if md, err := msg.Metadata(); err == nil {
				last = md.Sequence.Stream
			}
		}
		if err := batch.Error(); err != nil {
			return 0, false, fmt.Errorf("read the reports of job %s: %w", id, err)
		}
		if n == 0 {
			return last, last > 0, nil
		}
	}
}

// reportRecheck is how soon ensureWork looks again at an attempt whose
// report is waiting to be handled.
const reportRecheck = time.Second

// reportHandled reports whether the worker report stored at seq has been
// handled: the reports' consumer has acked everything up to it.
func (p *Processor) reportHandled(ctx context.Context, seq uint64) (bool, error) {
	c, err := p.cfg.JS.Consumer(ctx, bus.StreamEvents, DurableExec)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("consumer %s: %w", DurableExec, err)
	}
	return c.CachedInfo().AckFloor.Stream >= seq, nil
}
