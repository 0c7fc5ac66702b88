package processor

import (
	"context"
	"errors"
	"fmt"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/services/job-processor/internal/record"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// maxConflicts bounds the compare-and-set retries of one update. Conflicts
// come from replicas handling events of the same job at the same moment, so a
// few retries settle them; past that, the message is redelivered later.
const maxConflicts = 16

// store keeps the processor's records in the executions KV bucket, one key
// per job, changed only by compare-and-set on the key's revision.
type store struct {
	kv jetstream.KeyValue
}

// get returns the record of id and its revision; nil if there is none.
func (s store) get(ctx context.Context, id string) (*jobsv1.Job, uint64, error) {
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get record %s: %w", id, err)
	}
	rec := &jobsv1.Job{}
	if err := proto.Unmarshal(e.Value(), rec); err != nil {
		return nil, 0, fmt.Errorf("decode record %s: %w", id, err)
	}
	return rec, e.Revision(), nil
}

// changeFunc changes a record in place (rec is nil when there is none yet)
// and returns the record to keep and what it did. Only Applied is written.
// It may run several times, on a freshly loaded record each time.
type changeFunc func(rec *jobsv1.Job) (*jobsv1.Job, record.Outcome, error)

// update loads the record of id, applies change and writes the result with
// compare-and-set (Create when absent, Update on the loaded revision). On a
// conflict another replica won: reload and apply again, so the change is
// judged against the record as it now is.
func (s store) update(ctx context.Context, id string, change changeFunc) (*jobsv1.Job, record.Outcome, error) {
	for range maxConflicts {
		rec, rev, err := s.get(ctx, id)
		if err != nil {
			return nil, record.Ignored, err
		}
		existed := rec != nil
		rec, outcome, err := change(rec)
		if err != nil || outcome != record.Applied {
			return rec, outcome, err
		}
		data, err := proto.Marshal(rec)
		if err != nil {
			return nil, record.Ignored, fmt.Errorf("encode record %s: %w", id, err)
		}
		if existed {
			_, err = s.kv.Update(ctx, id, data, rev)
		} else {
			_, err = s.kv.Create(ctx, id, data)
		}
		switch {
		case err == nil:
			return rec, outcome, nil
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyExists):
			continue
		default:
			return nil, record.Ignored, fmt.Errorf("write record %s: %w", id, err)
		}
	}
	return nil, record.Ignored, fmt.Errorf("write record %s: still conflicting after %d attempts", id, maxConflicts)
}
