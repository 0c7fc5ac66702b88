// Package jobstore is the mediator's job repository: one record per job in
// the JetStream KV bucket medius_jobs (key = job id, value = binary protobuf
// jobsv1.Job), updated with compare-and-set on the entry revision, plus the
// idempotency records mapping a tenant's request id to the job it created.
package jobstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/jobstate"
	"github.com/medius-platform/medius/pkg/revcache"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

var (
	// ErrNotFound: no job with that id.
	ErrNotFound = errors.New("job not found")
	// ErrConflict: the record changed since it was read; read it again.
	ErrConflict = errors.New("job changed concurrently")
	// ErrExists: a create found a record under the job's id already.
	ErrExists = errors.New("job id taken")
)

// Store is the job repository.
type Store struct {
	kv     jetstream.KeyValue
	window time.Duration
	// cache serves GetCached: the records of unfinished jobs this process
	// last read or wrote, so applying a status event to a job this
	// process knows costs a write, not a read and a write.
	cache *revcache.Cache[[]byte]
}

// New uses kv (the bus.BucketJobs bucket).
func New(kv jetstream.KeyValue) *Store {
	return &Store{kv: kv, window: RequestWindow, cache: newRecordCache(cacheEntries, cacheBytes)}
}

// SetRequestWindow changes how long request ids are remembered (tests).
func (s *Store) SetRequestWindow(d time.Duration) { s.window = d }

// NewID returns a fresh job id. UUIDv7 ids start with their creation time in
// milliseconds, so ordering ids orders jobs by creation.
func NewID() (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("new job id: %w", err)
	}
	return id.String(), nil
}

// ValidID reports whether id can name a job. Anything else cannot exist, and
// is never used as a KV key (whose syntax is narrower than a URL path's).
func ValidID(id string) bool {
	u, err := uuid.Parse(id)
	return err == nil && u.String() == id
}

// IDTime is the creation time encoded in a UUIDv7 job id.
func IDTime(id string) (time.Time, bool) {
	u, err := uuid.Parse(id)
	if err != nil || u.Version() != 7 {
		return time.Time{}, false
	}
	sec, nsec := u.Time().UnixTime()
	return time.Unix(sec, nsec), true
}

// Get returns the job as stored now and its revision, or ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (*jobsv1.Job, uint64, error) {
	if !ValidID(id) {
		return nil, 0, ErrNotFound
	}
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		s.cache.Drop(id)
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get job %s: %w", id, err)
	}
	job := &jobsv1.Job{}
	if err := proto.Unmarshal(e.Value(), job); err != nil {
		return nil, 0, fmt.Errorf("decode job %s: %w", id, err)
	}
	s.remember(job, e.Value(), e.Revision())
	return job, e.Revision(), nil
}

// GetCached returns the job and its revision as this process last read or
// wrote them if it still remembers them (cached reports it), else as Get.
// A remembered record may be stale, since other processes and replicas write
// records too: it is only for a read-modify-write, whose Update on the
// revision fails with ErrConflict if the record changed since. A decision not
// to write, taken on a cached record, is verified by nothing: take it again on
// Get's record before relying on it.
func (s *Store) GetCached(ctx context.Context, id string) (job *jobsv1.Job, rev uint64, cached bool, err error) {
	if data, rev, ok := s.cache.Get(id); ok {
		job := &jobsv1.Job{}
		if err := proto.Unmarshal(data, job); err == nil {
			return job, rev, true, nil
		}
		s.cache.Drop(id)
	}
	job, rev, err = s.Get(ctx, id)
	return job, rev, false, err
}

// remember caches data as revision rev of job, while the job may still
// change: a finished job's record is never updated by the status consumer
// again (late events are checked on a fresh read anyway), so it only takes
// room.
func (s *Store) remember(job *jobsv1.Job, data []byte, rev uint64) {
	if jobstate.IsTerminal(job.GetStatus()) {
		s.cache.Drop(job.GetId())
		return
	}
	if len(data) > cacheMaxRecord {
		s.cache.Drop(job.GetId())
		return
	}
	s.cache.Put(job.GetId(), data, rev)
}

// Create stores a new job; it fails with ErrExists if the id is taken.
func (s *Store) Create(ctx context.Context, job *jobsv1.Job) (uint64, error) {
	data, err := proto.Marshal(job)
	if err != nil {
		return 0, fmt.Errorf("encode job %s: %w", job.GetId(), err)
	}
	rev, err := s.kv.Create(ctx, job.GetId(), data)
	if err != nil {
		if bus.IsWrongLastSequence(err) {
			return 0, fmt.Errorf("create job %s: %w: %w", job.GetId(), ErrExists, err)
		}
		return 0, fmt.Errorf("create job %s: %w", job.GetId(), err)
	}
	s.remember(job, data, rev)
	return rev, nil
}

// PendingCreate is a create of a job record sent without waiting for its
// answer (CreateAsync); Wait learns the outcome.
type PendingCreate struct {
	store *Store
	job   *jobsv1.Job
	data  []byte
	ack   jetstream.PubAckFuture
}

// CreateAsync sends the create of a new job's record and returns without
// waiting for the answer, so that the caller can send other messages on the
// same connection meanwhile and wait for all answers at once: one round trip
// instead of one each. js is the JetStream context the bucket was opened
// with; it must use the default API prefix (no domain), as the bus does.
//
// It writes what Create writes: the record on the key's subject, expecting
// no earlier write of the key. Unlike Create it does not take over a key
// whose last write deleted it; a new job's id (a fresh UUIDv7) never had one.
func (s *Store) CreateAsync(js jetstream.JetStream, job *jobsv1.Job) (*PendingCreate, error) {
	id := job.GetId()
	if !ValidID(id) {
		return nil, fmt.Errorf("create job %q: invalid id", id)
	}
	data, err := proto.Marshal(job)
	if err != nil {
		return nil, fmt.Errorf("encode job %s: %w", id, err)
	}
	msg := &nats.Msg{Subject: bus.KVSubject(s.kv.Bucket(), id), Data: data, Header: nats.Header{}}
	ack, err := js.PublishMsgAsync(msg, jetstream.WithExpectLastSequencePerSubject(0))
	if err != nil {
		return nil, fmt.Errorf("create job %s: %w", id, err)
	}
	return &PendingCreate{store: s, job: job, data: data, ack: ack}, nil
}

// Wait returns the record's revision once the create is acknowledged, and
// remembers the record like Create. It fails with ErrExists if the id was
// taken; if ctx ends first, it returns ctx's cause and the outcome is
// unknown (the record may be stored).
func (p *PendingCreate) Wait(ctx context.Context) (uint64, error) {
	id := p.job.GetId()
	select {
	case ack := <-p.ack.Ok():
		p.store.remember(p.job, p.data, ack.Sequence)
		return ack.Sequence, nil
	case err := <-p.ack.Err():
		if bus.IsWrongLastSequence(err) {
			return 0, fmt.Errorf("create job %s: %w: %w", id, ErrExists, err)
		}
		return 0, fmt.Errorf("create job %s: %w", id, err)
	case <-ctx.Done():
		return 0, fmt.Errorf("create job %s: %w", id, context.Cause(ctx))
	}
}

// Update replaces the job if its revision is still rev; ErrConflict if not.
func (s *Store) Update(ctx context.Context, job *jobsv1.Job, rev uint64) (uint64, error) {
	data, err := proto.Marshal(job)
	if err != nil {
		return 0, fmt.Errorf("encode job %s: %w", job.GetId(), err)
	}
	nrev, err := s.kv.Update(ctx, job.GetId(), data, rev)
	if err != nil {
		// Whatever is cached is not the stored record (a conflict), or
		// may not be (the write's outcome is unknown).
		s.cache.Drop(job.GetId())
		if bus.IsWrongLastSequence(err) {
			return 0, fmt.Errorf("update job %s: %w", job.GetId(), ErrConflict)
		}
		return 0, fmt.Errorf("update job %s: %w", job.GetId(), err)
	}
	s.remember(job, data, nrev)
	return nrev, nil
}

// Delete removes a job record: CreateJob withdrawing a record it stored but
// never acknowledged, the sweep and retention removing old jobs.
func (s *Store) Delete(ctx context.Context, id string) error {
	// Dropped whether or not the purge gets through: a record cached after
	// its deletion would only cost a failed compare-and-set, but need not.
	defer s.cache.Drop(id)
	if err := s.kv.Purge(ctx, id); err != nil {
		return fmt.Errorf("delete job %s: %w", id, err)
	}
	return nil
}

// IDs returns every job id, newest first. Job ids are single-token keys,
// so the filter skips the idempotency records ("req.<tenant>.<hash>").
//
// It scans the bucket's keys: fine for the skeleton's volumes; a later issue
// adds a per-tenant index.
func (s *Store) IDs(ctx context.Context) ([]string, error) {
	lister, err := s.kv.ListKeysFiltered(ctx, "*")
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("list job keys: %w", err)
	}
	var ids []string
	for k := range lister.Keys() {
		if ValidID(k) {
			ids = append(ids, k)
		}
	}
	// The lister stops its watcher itself once the keys are delivered; it
	// also stops early, closing the channel, when ctx ends.
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	slices.Sort(ids)
	slices.Reverse(ids)
	return ids, nil
}

// RequestKey is the idempotency record key of a tenant's request id. The
// request id is hashed: it is client text and KV keys allow few characters.
func RequestKey(tenant, requestID string) string {
	sum := sha256.Sum256([]byte(requestID))
	return "req." + tenant + "." + hex.EncodeToString(sum[:])
}

// RequestWindow is how long a request id answers with the job it created;
// after it, the id may create a new job.
const RequestWindow = 24 * time.Hour

// RequestOwner returns the job id claimed by (tenant, requestID) within the
// last RequestWindow, if any.
func (s *Store) RequestOwner(ctx context.Context, tenant, requestID string) (string, bool, error) {
	e, err := s.kv.Get(ctx, RequestKey(tenant, requestID))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read request id claim: %w", err)
	}
	if time.Since(e.Created()) > s.window {
		return "", false, nil
	}
	return string(e.Value()), true, nil
}

// ForgetRequest deletes the claim of (tenant, requestID).
func (s *Store) ForgetRequest(ctx context.Context, tenant, requestID string) error {
	if err := s.kv.Purge(ctx, RequestKey(tenant, requestID)); err != nil {
		return fmt.Errorf("forget request id: %w", err)
	}
	return nil
}

// ClaimRequest records that (tenant, requestID) is answered by job jobID,
// unless an earlier call already recorded another job: it returns the job id
// the request id belongs to, jobID if this call won.
func (s *Store) ClaimRequest(ctx context.Context, tenant, requestID, jobID string) (string, error) {
	key := RequestKey(tenant, requestID)
	_, err := s.kv.Create(ctx, key, []byte(jobID))
	if err == nil {
		return jobID, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return "", fmt.Errorf("claim request id: %w", err)
	}
	e, err := s.kv.Get(ctx, key)
	if err != nil {
		return "", fmt.Errorf("read request id claim: %w", err)
	}
	if time.Since(e.Created()) > s.window {
		// An expired claim: this job takes the id over (compare-and-set,
		// so of two racing takers one wins and the other sees its job).
		if _, err := s.kv.Update(ctx, key, []byte(jobID), e.Revision()); err == nil {
			return jobID, nil
		} else if !bus.IsWrongLastSequence(err) {
			return "", fmt.Errorf("renew request id claim: %w", err)
		}
		if e, err = s.kv.Get(ctx, key); err != nil {
			return "", fmt.Errorf("read request id claim: %w", err)
		}
	}
	return string(e.Value()), nil
}

// Watch follows the record of job id: its current value first, then every
// update, in order, on the channel until ctx ends. Watching the bucket
// rather than the status events means every mediator replica sees every
// change, whichever replica applied it.
func (s *Store) Watch(ctx context.Context, id string) (<-chan *jobsv1.Job, error) {
	if !ValidID(id) {
		return nil, ErrNotFound
	}
	w, err := s.kv.Watch(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("watch job %s: %w", id, err)
	}
	out := make(chan *jobsv1.Job)
	go func() {
		defer close(out)
		defer func() { _ = w.Stop() }()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					// End of the initial values: a job not stored yet
					// (or deleted) is reported as nil once.
					select {
					case out <- nil:
					case <-ctx.Done():
						return
					}
					continue
				}
				if e.Operation() != jetstream.KeyValuePut {
					return // deleted or purged: nothing more will come
				}
				job := &jobsv1.Job{}
				if err := proto.Unmarshal(e.Value(), job); err != nil {
					continue
				}
				select {
				case out <- job:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}
