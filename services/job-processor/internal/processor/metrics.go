package processor

import (
	"context"
	"fmt"
	"sync"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/jobstate"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// metrics counts jobs by profile (bounded: profiles are operator-defined)
// and, for jobs that end, by tenant.
type metrics struct {
	dispatchedC, completedC, failedC, canceledC, lostC metric.Int64Counter
	executionD                                         metric.Float64Histogram
	attrs                                              *attrSets
}

// attrSets keeps the attribute sets of recent measurements: building one
// (copying, sorting and hashing its attributes) for every job cost the
// processor a tenth of its CPU at full load, for a handful of distinct sets.
type attrSets struct {
	mu   sync.Mutex
	sets map[attrKey]metric.MeasurementOption
}

// attrKey names a set by its attributes (at most 3, in the order given).
type attrKey [3]attribute.KeyValue

// maxAttrSets bounds attrSets; past it the map starts afresh (tenants are
// many on a large platform, and a rebuilt set costs only what it used to).
const maxAttrSets = 4096

// get returns the measurement option of the set of kvs (at most 3), built
// the first time.
func (s *attrSets) get(kvs ...attribute.KeyValue) metric.MeasurementOption {
	var k attrKey
	copy(k[:], kvs)
	s.mu.Lock()
	defer s.mu.Unlock()
	if o, ok := s.sets[k]; ok {
		return o
	}
	if len(s.sets) >= maxAttrSets {
		clear(s.sets)
	}
	o := metric.WithAttributeSet(attribute.NewSet(kvs...))
	s.sets[k] = o
	return o
}

func newMetrics() (metrics, error) {
	meter := otel.Meter(instrumentation)
	m := metrics{attrs: &attrSets{sets: map[attrKey]metric.MeasurementOption{}}}
	for _, c := range []struct {
		dst        *metric.Int64Counter
		name, desc string
	}{
		{&m.dispatchedC, "medius.processor.jobs.dispatched", "Executions dispatched to a service."},
		{&m.completedC, "medius.processor.jobs.completed", "Jobs completed."},
		{&m.failedC, "medius.processor.jobs.failed", "Jobs failed (by a worker or for lack of a service)."},
		{&m.canceledC, "medius.processor.jobs.canceled", "Jobs canceled."},
		{&m.lostC, "medius.processor.executions.lost", "Executions whose worker was lost (no heartbeat)."},
	} {
		ctr, err := meter.Int64Counter(c.name, metric.WithDescription(c.desc), metric.WithUnit("{job}"))
		if err != nil {
			return metrics{}, fmt.Errorf("counter %s: %w", c.name, err)
		}
		*c.dst = ctr
	}
	var err error
	// Media jobs run from a second to hours.
	m.executionD, err = meter.Float64Histogram("medius.execution.duration",
		metric.WithDescription("Run time of executions that ended, from the worker's start to its end."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400))
	if err != nil {
		return metrics{}, fmt.Errorf("execution duration histogram: %w", err)
	}
	return m, nil
}

func (m metrics) dispatched(ctx context.Context, profile, service string) {
	m.dispatchedC.Add(ctx, 1, m.attrs.get(attribute.String("profile", profile), attribute.String("service", service)))
}

func (m metrics) completed(ctx context.Context, rec *jobsv1.Job) {
	m.completedC.Add(ctx, 1, m.ended(ctx, rec))
}

func (m metrics) failed(ctx context.Context, rec *jobsv1.Job) {
	m.failedC.Add(ctx, 1, m.ended(ctx, rec))
}

func (m metrics) canceled(ctx context.Context, rec *jobsv1.Job) {
	m.canceledC.Add(ctx, 1, m.ended(ctx, rec))
}

// ended records the run time of the job's last execution when it started
// and ended, and returns the profile and tenant attributes of its counters.
func (m metrics) ended(ctx context.Context, rec *jobsv1.Job) metric.MeasurementOption {
	m.ran(ctx, rec)
	return m.attrs.get(attribute.String("profile", rec.GetProfile()), attribute.String("tenant", rec.GetTenant()))
}

// ran records the run time of the job's last execution when it started and
// ended: at its end, or later for one ended before its start was known
// (record.TakeStart).
func (m metrics) ran(ctx context.Context, rec *jobsv1.Job) {
	if ex := jobstate.Current(rec); ex != nil && ex.GetStartTime() != nil && ex.GetEndTime() != nil {
		if d := ex.GetEndTime().AsTime().Sub(ex.GetStartTime().AsTime()); d >= 0 {
			m.executionD.Record(ctx, d.Seconds(), m.attrs.get(attribute.String("profile", rec.GetProfile()),
				attribute.String("service", ex.GetService()), attribute.String("status", jobstate.Name(rec.GetStatus()))))
		}
	}
}

func (m metrics) lost(ctx context.Context, profile string) {
	m.lostC.Add(ctx, 1, m.attrs.get(attribute.String("profile", profile)))
}
