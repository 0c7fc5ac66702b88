// Package metrics registers the gauges operators watch across services: the
// depth of every service's work queue and a worker's load against its
// capacity. They are OpenTelemetry observable instruments, read when
// /metrics is scraped (pkg/telemetry exports them in Prometheus format), so
// they cost nothing between scrapes.
package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/medius-platform/medius/pkg/bus"
)

const instrumentation = "github.com/medius-platform/medius/pkg/metrics"

// QueueDepthName is the gauge of work items waiting or running per service.
const QueueDepthName = "medius.queue.depth"

// RegisterQueueDepth reports, per service, the work items in its JetStream
// work queue: the stream keeps an item until a worker acknowledges its end,
// so this counts items waiting for a worker plus items being worked on.
// Every processor replica reports the same figure; aggregate with max.
func RegisterQueueDepth(js jetstream.JetStream) (metric.Registration, error) {
	meter := otel.Meter(instrumentation)
	g, err := meter.Int64ObservableGauge(QueueDepthName,
		metric.WithDescription("Work items in each service's work queue (waiting or running)."),
		metric.WithUnit("{item}"))
	if err != nil {
		return nil, fmt.Errorf("queue depth gauge: %w", err)
	}
	return meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		// A scrape must not hang on a slow NATS.
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		stream, err := js.Stream(ctx, bus.StreamWork)
		if err != nil {
			slog.DebugContext(ctx, "queue depth: stream unavailable", "err", err)
			return nil
		}
		// Each service's queue has one consumer, shared by its workers:
		// what it has not delivered yet plus what it awaits acks for is the
		// queue's depth. Every service with workers is reported, at 0 when
		// its queue is empty, so a dashboard shows it.
		depth := map[string]int64{}
		consumers := stream.ListConsumers(ctx)
		for ci := range consumers.Info() {
			for _, f := range append([]string{ci.Config.FilterSubject}, ci.Config.FilterSubjects...) {
				if service, ok := bus.WorkService(f); ok && f == bus.WorkQueue(service) {
					depth[service] += int64(ci.NumPending) + int64(ci.NumAckPending)
				}
			}
		}
		if err := consumers.Err(); err != nil {
			slog.DebugContext(ctx, "queue depth: consumers", "err", err)
		}
		for service, n := range depth {
			o.ObserveInt64(g, n, metric.WithAttributes(attribute.String("service", service)))
		}
		return nil
	}, g)
}

// RegisterWorkerLoad reports a worker's jobs in flight and its capacity (jobs
// it runs at once), labelled with its service, so a dashboard shows how full
// each service's pool is.
func RegisterWorkerLoad(service string, capacity int, inFlight func() int32) (metric.Registration, error) {
	meter := otel.Meter(instrumentation)
	inflight, err := meter.Int64ObservableGauge("medius.worker.jobs.in_flight",
		metric.WithDescription("Jobs this worker is running now."), metric.WithUnit("{job}"))
	if err != nil {
		return nil, fmt.Errorf("in-flight gauge: %w", err)
	}
	capG, err := meter.Int64ObservableGauge("medius.worker.capacity",
		metric.WithDescription("Jobs this worker runs at once."), metric.WithUnit("{job}"))
	if err != nil {
		return nil, fmt.Errorf("capacity gauge: %w", err)
	}
	attrs := metric.WithAttributes(attribute.String("service", service))
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(inflight, int64(inFlight()), attrs)
		o.ObserveInt64(capG, int64(capacity), attrs)
		return nil
	}, inflight, capG)
}
