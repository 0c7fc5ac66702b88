package metrics

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Webhooks counts notification deliveries to tenants' webhook endpoints. The
// mediator's notifier creates one with NewWebhooks and reports every attempt:
// Delivered when the endpoint answered 2xx, Failed otherwise (reason is a
// short, bounded word such as "timeout", "status_5xx", "refused").
type Webhooks struct {
	deliveries, failures metric.Int64Counter
}

// NewWebhooks registers medius.webhook.deliveries and medius.webhook.failures.
func NewWebhooks() (*Webhooks, error) {
	meter := otel.Meter(instrumentation)
	d, err := meter.Int64Counter("medius.webhook.deliveries",
		metric.WithDescription("Webhook notifications delivered (2xx), by tenant."), metric.WithUnit("{delivery}"))
	if err != nil {
		return nil, fmt.Errorf("webhook deliveries counter: %w", err)
	}
	f, err := meter.Int64Counter("medius.webhook.failures",
		metric.WithDescription("Webhook delivery attempts that failed, by tenant and reason."), metric.WithUnit("{delivery}"))
	if err != nil {
		return nil, fmt.Errorf("webhook failures counter: %w", err)
	}
	return &Webhooks{deliveries: d, failures: f}, nil
}

// Delivered counts a delivery the endpoint accepted. A nil *Webhooks counts
// nothing.
func (w *Webhooks) Delivered(ctx context.Context, tenant string) {
	if w == nil {
		return
	}
	w.deliveries.Add(ctx, 1, metric.WithAttributes(attribute.String("tenant", tenant)))
}

// Failed counts a failed attempt.
func (w *Webhooks) Failed(ctx context.Context, tenant, reason string) {
	if w == nil {
		return
	}
	w.failures.Add(ctx, 1, metric.WithAttributes(attribute.String("tenant", tenant), attribute.String("reason", reason)))
}
