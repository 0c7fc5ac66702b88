package processor

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// metrics counts jobs by profile (bounded: profiles are operator-defined).
type metrics struct {
	dispatchedC, completedC, failedC, canceledC, lostC metric.Int64Counter
}

func newMetrics() (metrics, error) {
	meter := otel.Meter(instrumentation)
	var m metrics
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
	return m, nil
}

func (m metrics) dispatched(ctx context.Context, profile, service string) {
	m.dispatchedC.Add(ctx, 1, metric.WithAttributes(attribute.String("profile", profile), attribute.String("service", service)))
}

func (m metrics) completed(ctx context.Context, profile string) {
	m.completedC.Add(ctx, 1, metric.WithAttributes(attribute.String("profile", profile)))
}

func (m metrics) failed(ctx context.Context, profile string) {
	m.failedC.Add(ctx, 1, metric.WithAttributes(attribute.String("profile", profile)))
}

func (m metrics) canceled(ctx context.Context, profile string) {
	m.canceledC.Add(ctx, 1, metric.WithAttributes(attribute.String("profile", profile)))
}

func (m metrics) lost(ctx context.Context, profile string) {
	m.lostC.Add(ctx, 1, metric.WithAttributes(attribute.String("profile", profile)))
}
