// Package jobapi serves the public JobService: creating jobs against job
// profiles (validated with the registry), reading, listing and cancelling a
// tenant's jobs. Job records live in the jobstore; the processor learns of new
// jobs and cancellations from events this package publishes.
package jobapi

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/services/mediator/internal/auth"
	"github.com/medius-platform/medius/services/mediator/internal/jobindex"
	"github.com/medius-platform/medius/services/mediator/internal/jobstore"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/sync/semaphore"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Page sizes of ListJobs.
const (
	DefaultPageSize = 50
	MaxPageSize     = 1000
)

// Server implements jobsv1.JobServiceServer.
type Server struct {
	jobsv1.UnimplementedJobServiceServer

	store    *jobstore.Store
	js       jetstream.JetStream
	profiles Profiles
	now      func() time.Time
	admitted metric.Int64Counter
	admit    Admission

	checkEndpoint func(string) error
	// roots scopes each tenant's file:// and s3:// locators (nil: not
	// checked; see SetLocatorRoots).
	roots LocatorRoots
	index *jobindex.Index
	// newID names new jobs (jobstore.NewID; tests choose ids).
	newID func() (string, error)

	// execs is the processor's bucket once bound (see executionsBucket).
	execsMu sync.Mutex
	execs   jetstream.KeyValue

	// creating bounds the jobs BatchCreateJobs calls create at once.
	creating *semaphore.Weighted

	// watches counts each tenant's watches open on this process.
	watches watchCounts
}

// SetIndex lists jobs through the index and keeps it (nil: listings scan
// the bucket, fine for tests and small installs only).
func (s *Server) SetIndex(x *jobindex.Index) { s.index = x }

// Admission takes and gives back a tenant's quota slots (package quota),
// one per run of a job: a run is named by the attempt that starts it.
type Admission interface {
	// Admit refuses a job beyond the tenant's quota (ResourceExhausted);
	// else the job's first run holds a slot.
	Admit(ctx context.Context, tenant, job string) error
	// AdmitRestart takes a concurrent slot for run, the attempt a restart
	// of the job ended adds, refused as Admit refuses
	// (ResourceExhausted), but counts no job of the period. The slots of
	// ended's runs are given back first. It reports whether it took a
	// slot (not when a restart of the same run at the same moment took
	// it, or the tenant has no limits).
	AdmitRestart(ctx context.Context, ended *jobsv1.Job, run int32) (bool, error)
	// ReleaseRun gives the slot of run of a job back (0: the job's slot
	// of the older layout, which names no run); idempotent.
	ReleaseRun(ctx context.Context, tenant, job string, run int32) error
	// Unadmit undoes Admit for a job not created after all: its slot, and
	// the job it counted of the period; idempotent.
	Unadmit(ctx context.Context, tenant, job string) error
	// ReleaseEnded gives back the slots of the runs job, ended, is over
	// (the status consumer's terminal hook); idempotent.
	ReleaseEnded(ctx context.Context, job *jobsv1.Job) error
}

// SetEndpointCheck checks every notification endpoint with check (the
// network policy: loopback and private addresses).
func (s *Server) SetEndpointCheck(check func(string) error) { s.checkEndpoint = check }

// SetAdmission checks every new job with a (nil: no quotas).
func (s *Server) SetAdmission(a Admission) { s.admit = a }

// unadmitWait bounds release.
const unadmitWait = 15 * time.Second

// release undoes the admission of a job that is not to run after all: the
// slot CreateJob took and the job it counted of the period.
func (s *Server) release(ctx context.Context, tenant, job string) {
	if s.admit == nil {
		return
	}
	// Bounded as a group commit's release was: etcd may be down.
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unadmitWait)
	defer cancel()
	if err := s.admit.Unadmit(uctx, tenant, job); err != nil {
		// The quota reconciliation frees the slot later; the period
		// keeps the count.
		slog.WarnContext(ctx, "undo quota admission", "job", job, "err", err)
	}
}

// releaseIfNotStored releases the admission of a job whose record's create
// failed with err, if the record is known not to be stored. A create not
// answered may have landed: the sweep then announces the job, which must
// keep its slot and its count of the period; should it never appear, the
// quota reconciliation frees the slot.
func (s *Server) releaseIfNotStored(ctx context.Context, tenant, job string, err error) {
	if refused(err) {
		s.release(ctx, tenant, job)
		return
	}
	slog.WarnContext(ctx, "job record's create unanswered: its quota admission is kept", "job", job, "err", err)
}

func (s *Server) releaseRun(ctx context.Context, tenant, job string, run int32) {
	if s.admit == nil {
		return
	}
	if err := s.admit.ReleaseRun(context.WithoutCancel(ctx), tenant, job, run); err != nil {
		// The quota reconciliation frees it later.
		slog.WarnContext(ctx, "release quota slot", "job", job, "run", run, "err", err)
	}
}

// New serves jobs from store, validating profiles with profiles and
// publishing events on js.
func New(store *jobstore.Store, js jetstream.JetStream, profiles Profiles) (*Server, error) {
	admitted, err := otel.Meter("github.com/medius-platform/medius/services/mediator").Int64Counter(
		"medius.mediator.jobs.admitted",
		metric.WithDescription("Runs of jobs accepted, by profile and tenant: new jobs (CreateJob, restarted=false) and restarts (RestartJob, restarted=true)."),
		metric.WithUnit("{job}"),
	)
	if err != nil {
		return nil, fmt.Errorf("jobs admitted counter: %w", err)
	}
	return &Server{store: store, js: js, profiles: profiles, now: time.Now, admitted: admitted, newID: jobstore.NewID,
		creating: semaphore.NewWeighted(maxCreating)}, nil
}

// CreateJob implements jobsv1.JobServiceServer.
func (s *Server) CreateJob(ctx context.Context, req *jobsv1.CreateJobRequest) (*jobsv1.Job, error) {
	tenant, err := auth.TenantFrom(ctx)
	if err != nil {
		return nil, err
	}
	c, err := s.checkCreate(ctx, tenant, req)
	if err != nil {
		return nil, err
	}
	return s.create(ctx, tenant, c)
}

// checked is a create request that passed checkCreate.
type checked struct {
	in        *jobsv1.Job
	requestID string
	profile   *registryv1.JobProfile
	// roots are the tenant's locator roots its locators were checked
	// against, which the job carries to its workers.
	roots *jobsv1.LocatorRoots
}

// checkCreate refuses a request of tenant CreateJob would refuse as invalid
// (its fields, its profile) or as naming a locator the tenant may not (its
// locator roots), before anything is written.
func (s *Server) checkCreate(ctx context.Context, tenant string, req *jobsv1.CreateJobRequest) (checked, error) {
	in := req.GetJob()
	if err := validateJob(in); err != nil {
		return checked{}, err
	}
	if ttl := in.GetTtl(); ttl != nil && (ttl.CheckValid() != nil || ttl.AsDuration() < 0) {
		return checked{}, problem.InvalidArgument("job.ttl", "ttl must be a non-negative duration")
	}
	if ep := in.GetNotificationEndpoint(); ep != "" && s.checkEndpoint != nil {
		if err := s.checkEndpoint(ep); err != nil {
			return checked{}, err
		}
	}
	requestID := req.GetRequestId()
	if requestID == "" {
		requestID = in.GetRequestId()
	} else if in.GetRequestId() != "" && in.GetRequestId() != requestID {
		return checked{}, problem.InvalidArgument("request_id", "request_id and job.request_id differ")
	}
	if len(requestID) > maxRequestIDLen {
		return checked{}, problem.InvalidArgument("request_id", "request id longer than %d bytes", maxRequestIDLen)
	}
	profile, err := s.profiles.GetJobProfile(ctx, in.GetProfile())
	if err != nil {
		return checked{}, profileError(in.GetProfile(), err)
	}
	var before map[string]bool
	if s.roots != nil {
		before = locatorNames(in.GetInput())
	}
	if err := validateAgainstProfile(in, profile); err != nil {
		return checked{}, err
	}
	// After the profile check, which turns URL string parameters into
	// locators: those are read and written by the worker as any other.
	roots, err := s.checkLocatorRoots(ctx, tenant, in.GetInput(), movedLocators(in.GetInput(), before))
	if err != nil {
		return checked{}, err
	}
	return checked{in: in, requestID: requestID, profile: profile, roots: roots}, nil
}

// create creates the job of a checked request for tenant: admitted by the
// quota, stored, announced and indexed.
func (s *Server) create(ctx context.Context, tenant string, c checked) (*jobsv1.Job, error) {
	in, requestID, profile := c.in, c.requestID, c.profile
	// A retried submit is answered before the quota is asked, so a client
	// at its limit still gets the job it already created.
	if requestID != "" {
		if first, err := s.repeated(ctx, tenant, requestID); err != nil || first != nil {
			return first, err
		}
	}

	id, err := s.newID()
	if err != nil {
		return nil, err
	}
	if s.admit != nil {
		// On the client's ctx: an admission the client gives up on while
		// it waits for its turn is withdrawn, never made; one being
		// committed answers what happened to it (groupcommit.Do).
		if err := s.admit.Admit(ctx, tenant, id); err != nil {
			return nil, admitError(ctx, id, err)
		}
	}
	// From the admission on, the job is created to its end whatever the
	// client does: a job admitted but not created would hold a slot until
	// the reconciliation and count against the period for good. What it
	// waits for now are NATS requests, each bounded by the client's
	// default timeout, and the index write, on the client's ctx.
	clientCtx := ctx
	ctx = context.WithoutCancel(ctx)
	now := timestamppb.New(s.now())
	job := &jobsv1.Job{
		Id:                   id,
		Tenant:               tenant,
		JobType:              in.GetJobType(),
		Profile:              in.GetProfile(),
		Input:                in.GetInput(),
		Status:               jobsv1.JobStatus_JOB_STATUS_NEW,
		RequestId:            requestID,
		NotificationEndpoint: in.GetNotificationEndpoint(),
		Timeout:              in.GetTimeout(),
		Deadline:             in.GetDeadline(),
		Tags:                 in.GetTags(),
		Region:               in.GetRegion(),
		Tracking:             in.GetTracking(),
		Ttl:                  in.GetTtl(),
		LocatorRoots:         c.roots,
		CreateTime:           now,
		UpdateTime:           now,
	}
	if job.JobType == "" {
		job.JobType = profile.GetJobType()
	}
	if job.Input == nil {
		job.Input = &jobsv1.JobInput{}
	}

	if requestID == "" {
		if err := s.storeAndAnnounce(ctx, job); err != nil {
			return nil, err
		}
	} else {
		// The record is stored before the request id is claimed: a claim
		// then always names a stored job. A crash between the two leaves a
		// NEW job whose claim the sweep completes (or, if a retry won,
		// deletes the job). And the job is announced only once its claim
		// is won, so a repeat never runs.
		if _, err := s.store.Create(ctx, job); err != nil {
			s.releaseIfNotStored(ctx, tenant, id, err)
			return nil, storeError(ctx, fmt.Errorf("create job %s: %w", id, err))
		}
		owner, err := s.store.ClaimRequest(ctx, tenant, requestID, id)
		if err != nil {
			// Left NEW, the sweep completes the claim and publishes the
			// job, so a retry with the same request id finds it.
			return nil, storeError(ctx, fmt.Errorf("create job %s: %w", id, err))
		}
		if owner != id {
			return s.answerRepeat(ctx, job, owner)
		}
		if err := s.publishCreated(ctx, job); err != nil {
			// The job is stored; the sweep publishes it.
			slog.WarnContext(ctx, "job stored, publish deferred to sweep", "job", id, "err", err)
		}
	}
	// Indexed after the announcement, so the job is on its way to a worker
	// while the index write (an etcd fsync) completes; the call still
	// returns only once the job is listed. Should this write fail or the
	// process die first, the index consumer writes it from the JobCreated.
	if s.index != nil {
		// A client gone leaves the entry to the index consumer rather than
		// waiting for etcd.
		if err := s.index.Put(clientCtx, tenant, indexEntry(job)); err != nil {
			slog.WarnContext(ctx, "job stored, index deferred to its consumer", "job", id, "err", err)
		}
	}
	s.admitted.Add(ctx, 1, metric.WithAttributes(attribute.String("profile", job.Profile), attribute.String("tenant", tenant), attribute.Bool("restarted", false)))
	slog.InfoContext(ctx, "job created", "job", id, "tenant", tenant, "profile", job.Profile)
	return job, nil
}

// admitError maps a failed admission of job id: a refusal (the quota
// reached: 429 / ResourceExhausted) is the client's to see; anything else is
// the quota store's, and retryable.
func admitError(ctx context.Context, id string, err error) error {
	var pe *problem.Error
	if errors.As(err, &pe) {
		return err
	}
	return storeError(ctx, fmt.Errorf("admit job %s: %w", id, err))
}

// answerRepeat withdraws the record made for a repeated request and answers
// with the job the first request created.
func (s *Server) answerRepeat(ctx context.Context, mine *jobsv1.Job, owner string) (*jobsv1.Job, error) {
	if err := s.store.Delete(ctx, mine.GetId()); err != nil {
		// Left NEW, the sweep finds it is not the claim's job and deletes it.
		slog.WarnContext(ctx, "withdraw duplicate job record", "job", mine.GetId(), "err", err)
	} else {
		s.release(ctx, mine.GetTenant(), mine.GetId())
	}
	first, _, err := s.store.Get(ctx, owner)
	if err != nil {
		return nil, storeError(ctx, fmt.Errorf("load job %s of request id: %w", owner, err))
	}
	return first, nil
}

// repeated returns the job an earlier call with requestID created, if any.
func (s *Server) repeated(ctx context.Context, tenant, requestID string) (*jobsv1.Job, error) {
	owner, ok, err := s.store.RequestOwner(ctx, tenant, requestID)
	if err != nil {
		return nil, storeError(ctx, err)
	}
	if !ok {
		return nil, nil
	}
	first, _, err := s.store.Get(ctx, owner)
	if errors.Is(err, jobstore.ErrNotFound) {
		return nil, nil // expired with its job; a new one may take the id
	}
	if err != nil {
		return nil, storeError(ctx, err)
	}
	return first, nil
}

func (s *Server) publishCreated(ctx context.Context, job *jobsv1.Job) error {
	return bus.Publish(ctx, s.js, bus.SubjectJobCreated, "created-"+job.GetId(), &eventsv1.JobCreated{Job: job})
}

// Budgets of storeAndAnnounce.
const (
	// ackWait bounds the wait for the answers to the record's create and
	// the announcement, as the JetStream client's default request timeout
	// bounds a Create or a Publish.
	ackWait = 5 * time.Second
	// A record that failed while its announcement may have gone out is
	// created again up to recordTries times, recordRetryPause apart, each
	// try given recordTryWait; withdrawing the job, if that fails too, is
	// tried up to cancelTries times likewise. Rare, and bounded: the call
	// fails within seconds more than it would have anyway.
	recordTries      = 3
	recordTryWait    = 2 * time.Second
	recordRetryPause = 100 * time.Millisecond
	cancelTries      = 3
)

// errNoAnswer: a write sent but not answered within ackWait; it may have
// been stored.
var errNoAnswer = errors.New("no answer from the job store")

// storeAndAnnounce stores the record of a new job without a request id and
// announces it (JobCreated), sending both before waiting for either: one
// round trip instead of two. Their order does not matter: the processor takes
// the whole job from the JobCreated and never reads this record, and the
// status consumer retries an event whose record is not stored yet.
//
// Either write can fail alone. How each outcome keeps a job answered with 2xx
// from being lost, and a job the client is told failed from running:
//   - both stored: the usual case.
//   - record stored, announcement not (or no answer): the job is accepted;
//     the sweep announces a record left NEW. Failing the call would make the
//     client submit the job twice.
//   - record not stored (or no answer), announcement stored or possibly
//     stored: the processor may run a job without a record, which the client
//     would be told failed. The create is tried again a few times, and an
//     answer that the id holds this very job means an earlier try was stored
//     after all. If the record still cannot be stored, a JobCancelRequested
//     stops the job (the processor drops a cancel of a job it never heard
//     of), its quota slot is released and the call fails Unavailable.
//   - neither stored (the announcement refused or never sent): as when the
//     record was stored first and failed: the slot is released and the call
//     fails Unavailable.
//
// Once the writes are sent, their outcome is waited for even if the client
// gives up: the compensations above must follow what was stored, not the
// client's patience.
func (s *Server) storeAndAnnounce(ctx context.Context, job *jobsv1.Job) error {
	id, tenant := job.GetId(), job.GetTenant()
	wctx, cancel := context.WithTimeoutCause(context.WithoutCancel(ctx), ackWait, errNoAnswer)
	defer cancel()

	record, err := s.store.CreateAsync(s.js, job)
	if err != nil {
		// Nothing was sent.
		s.release(ctx, tenant, id)
		return storeError(ctx, err)
	}
	announcement, announced := s.publishCreatedAsync(ctx, job)
	if announced == nil {
		announced = waitAck(wctx, announcement)
	}
	_, stored := record.Wait(wctx)

	if stored != nil && !refused(announced) {
		slog.WarnContext(ctx, "job announced without its record, storing it again", "job", id, "err", stored)
		if s.storeAgain(ctx, job) {
			stored = nil
		} else {
			s.withdraw(ctx, job)
		}
	}
	if stored != nil {
		s.releaseIfNotStored(ctx, tenant, id, stored)
		return storeError(ctx, stored)
	}
	if announced != nil {
		slog.WarnContext(ctx, "job stored, publish deferred to sweep", "job", id, "err", announced)
	}
	return nil
}

// errNotSent: a write the NATS client did not send.
var errNotSent = errors.New("not sent")

// refused reports whether a publish is known not to have been stored: not
// sent, refused by the stream, or no stream to take it. Any other failure
// (no answer, a lost connection) may have been stored.
func refused(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, errNotSent) || errors.As(err, &apiErr) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// storeAgain retries the create of job's record, reporting whether the record
// is stored: by a retry, or by an earlier try whose answer was lost (the id
// then holds this job).
func (s *Server) storeAgain(ctx context.Context, job *jobsv1.Job) bool {
	ctx = context.WithoutCancel(ctx)
	for try := range recordTries {
		if try > 0 {
			time.Sleep(recordRetryPause)
		}
		tctx, cancel := context.WithTimeout(ctx, recordTryWait)
		_, err := s.store.Create(tctx, job)
		if errors.Is(err, jobstore.ErrExists) {
			var held *jobsv1.Job
			held, _, err = s.store.Get(tctx, job.GetId())
			if err == nil && !sameJob(held, job) {
				// Another record holds the id: no try of this job's
				// can ever be stored.
				cancel()
				slog.ErrorContext(ctx, "job id taken by another record", "job", job.GetId())
				return false
			}
		}
		cancel()
		if err == nil {
			return true
		}
		slog.WarnContext(ctx, "store job record again", "job", job.GetId(), "try", try+1, "err", err)
	}
	return false
}

// sameJob reports whether a record read holds job, as created: a record is
// updated (its status) once the job runs, so not all of it is compared.
func sameJob(held, job *jobsv1.Job) bool {
	return held.GetId() == job.GetId() && held.GetTenant() == job.GetTenant() &&
		held.GetCreateTime().AsTime().Equal(job.GetCreateTime().AsTime())
}

// withdraw asks the processor to stop a job announced without a record,
// whose client is told it failed; like CancelJob, but for a job that cannot
// be loaded. Should this fail too, the job may run unknown to the mediator:
// the status consumer drops its events once it gives up waiting for the
// record.
func (s *Server) withdraw(ctx context.Context, job *jobsv1.Job) {
	ctx = context.WithoutCancel(ctx)
	ev := &eventsv1.JobCancelRequested{JobId: job.GetId(), Tenant: job.GetTenant()}
	var err error
	for try := range cancelTries {
		if try > 0 {
			time.Sleep(recordRetryPause)
		}
		tctx, cancel := context.WithTimeout(ctx, recordTryWait)
		err = bus.Publish(tctx, s.js, bus.SubjectJobCancel, "cancel-"+job.GetId(), ev)
		cancel()
		if err == nil {
			slog.WarnContext(ctx, "job without a record withdrawn", "job", job.GetId())
			return
		}
	}
	slog.ErrorContext(ctx, "withdraw job announced without a record", "job", job.GetId(), "err", err)
}

// publishCreatedAsync sends the job's JobCreated as publishCreated does,
// without waiting for the answer. It fails with errNotSent.
func (s *Server) publishCreatedAsync(ctx context.Context, job *jobsv1.Job) (jetstream.PubAckFuture, error) {
	msg, err := bus.NewMsg(ctx, bus.SubjectJobCreated, &eventsv1.JobCreated{Job: job})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNotSent, err)
	}
	f, err := s.js.PublishMsgAsync(msg, jetstream.WithMsgID("created-"+job.GetId()))
	if err != nil {
		return nil, fmt.Errorf("%w: publish %s: %w", errNotSent, bus.SubjectJobCreated, err)
	}
	return f, nil
}

// waitAck returns the outcome of an async publish, or ctx's cause if ctx
// ends first.
func waitAck(ctx context.Context, f jetstream.PubAckFuture) error {
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return fmt.Errorf("publish %s: %w", f.Msg().Subject, err)
	case <-ctx.Done():
		return fmt.Errorf("publish %s: %w", f.Msg().Subject, context.Cause(ctx))
	}
}

// profileError maps a failed profile lookup: an unknown profile is the
// client's mistake; anything else is ours, and retryable.
func profileError(name string, err error) error {
	var pe *problem.Error
	switch {
	case errors.Is(err, ErrProfileNotFound):
		return problem.InvalidArgument("job.profile", "unknown profile %q", name)
	case errors.As(err, &pe), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return problem.Unavailable("job profile registry unavailable", err)
}

// storeError maps a job store failure: NATS unreachable or slow is a
// retryable condition for the client, not an internal error.
func storeError(ctx context.Context, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	// The client sees only the detail; the cause is for operators.
	slog.WarnContext(ctx, "job store unavailable", "err", err)
	return problem.Unavailable("job store unavailable", err)
}

// GetJob implements jobsv1.JobServiceServer.
func (s *Server) GetJob(ctx context.Context, req *jobsv1.GetJobRequest) (*jobsv1.Job, error) {
	job, _, err := s.load(ctx, req.GetId())
	return job, err
}

// load returns the caller's job. Another tenant's job is NotFound, exactly
// like a missing one, so ids reveal nothing across tenants.
func (s *Server) load(ctx context.Context, id string) (*jobsv1.Job, uint64, error) {
	tenant, err := auth.TenantFrom(ctx)
	if err != nil {
		return nil, 0, err
	}
	job, rev, err := s.store.Get(ctx, id)
	if errors.Is(err, jobstore.ErrNotFound) || (err == nil && job.GetTenant() != tenant) {
		return nil, 0, problem.NotFound("job", id)
	}
	if err != nil {
		return nil, 0, storeError(ctx, err)
	}
	return job, rev, nil
}

// CancelJob implements jobsv1.JobServiceServer. It only asks: the processor
// stops the execution and reports CANCELED through the status events.
//
// The request names the latest attempt the record knows. Right after a
// restart that is the restart's (RestartJob adds its execution), which the
// processor may not have applied yet when the cancel reaches it (they
// travel on separate consumers): it then waits for the restart instead of
// finding the job still ended from its run before and doing nothing, while
// the restart ran the job.
func (s *Server) CancelJob(ctx context.Context, req *jobsv1.CancelJobRequest) (*jobsv1.Job, error) {
	job, rev, err := s.load(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	if jobstate.IsTerminal(job.GetStatus()) {
		return nil, problem.FailedPrecondition("job-terminal", fmt.Sprintf("job %s is already %s", job.GetId(), jobstate.Name(job.GetStatus())))
	}
	// The processor numbers executions as the record does, and reaches
	// this count once it has applied every restart the record holds.
	attempts, known := jobstate.LatestAttempt(job), true
	if attempts == 0 {
		// The processor may have dispatched the job without announcing it
		// yet (it holds SCHEDULED back a while): its record knows.
		attempts, known = s.processorAttempts(ctx, job.GetId())
	}
	// Known, 0 too: a job canceled before any dispatch, then restarted,
	// must not have its restarted run ended by this cancel redelivered late.
	ev := &eventsv1.JobCancelRequested{JobId: job.GetId(), Tenant: job.GetTenant(), Attempts: attempts, AttemptsKnown: known}
	if err := bus.Publish(ctx, s.js, bus.SubjectJobCancel, cancelMsgID(job.GetId(), rev), ev); err != nil {
		return nil, problem.Unavailable("cannot request cancellation now", err)
	}
	slog.InfoContext(ctx, "job cancel requested", "job", job.GetId())
	return job, nil
}

// cancelMsgID names the cancel request of job id decided on revision rev of
// its record: "cancel-<job>-rev<rev>". A job canceled, restarted and
// canceled again is asked twice, on two revisions (the restart wrote one in
// between), so the second request is not taken by the events stream for a
// duplicate of the first, which would answer 200 and leave the job running.
// A publish tried again for one request, or a request repeated while the
// record has not changed, is stored once; the processor's cancel is
// idempotent anyway.
func cancelMsgID(id string, rev uint64) string {
	return fmt.Sprintf("cancel-%s-rev%d", id, rev)
}

// ListJobs implements jobsv1.JobServiceServer: the caller's jobs, newest
// first. The page token is the last id returned; since ids order by creation,
// the next page starts strictly after it, so jobs created meanwhile never
// shift pages (no repeats, no gaps).
func (s *Server) ListJobs(ctx context.Context, req *jobsv1.ListJobsRequest) (*jobsv1.ListJobsResponse, error) {
	tenant, err := auth.TenantFrom(ctx)
	if err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, problem.InvalidArgument("page_size", "page_size must not be negative")
	case size == 0:
		size = DefaultPageSize
	case size > MaxPageSize:
		return nil, problem.InvalidArgument("page_size", "page_size must be at most %d", MaxPageSize)
	}
	after, err := decodePageToken(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	if s.index != nil {
		return s.listIndexed(ctx, tenant, req, size, after)
	}
	ids, err := s.store.IDs(ctx)
	if err != nil {
		return nil, storeError(ctx, err)
	}
	resp := &jobsv1.ListJobsResponse{}
	for _, id := range ids {
		if after != "" && id >= after {
			continue
		}
		job, _, err := s.store.Get(ctx, id)
		if errors.Is(err, jobstore.ErrNotFound) {
			continue // withdrawn since the keys were listed
		}
		if err != nil {
			return nil, storeError(ctx, err)
		}
		if !matches(job, tenant, req) {
			continue
		}
		if len(resp.Jobs) == size {
			// One more match exists: only then is there a next page, so a
			// client never fetches an empty last page.
			resp.NextPageToken = encodePageToken(resp.Jobs[size-1].GetId())
			break
		}
		resp.Jobs = append(resp.Jobs, job)
	}
	return resp, nil
}

func matches(job *jobsv1.Job, tenant string, req *jobsv1.ListJobsRequest) bool {
	if job.GetTenant() != tenant {
		return false
	}
	if st := req.GetStatus(); st != jobsv1.JobStatus_JOB_STATUS_UNSPECIFIED && job.GetStatus() != st {
		return false
	}
	if p := req.GetProfile(); p != "" && job.GetProfile() != p {
		return false
	}
	if !tagMatches(job.GetTags(), req.GetTag()) {
		return false
	}
	created := job.GetCreateTime().AsTime()
	if a := req.GetCreateTimeAfter(); a != nil && created.Before(a.AsTime()) {
		return false
	}
	if b := req.GetCreateTimeBefore(); b != nil && !created.Before(b.AsTime()) {
		return false
	}
	return true
}

// tagMatches: "key=value" wants that value, "key" any value.
func tagMatches(tags map[string]string, filter string) bool {
	if filter == "" {
		return true
	}
	k, v, hasValue := strings.Cut(filter, "=")
	got, ok := tags[k]
	return ok && (!hasValue || got == v)
}

func encodePageToken(lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(lastID))
}

func decodePageToken(tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || !jobstore.ValidID(string(b)) {
		return "", problem.InvalidArgument("page_token", "invalid page token")
	}
	return string(b), nil
}
