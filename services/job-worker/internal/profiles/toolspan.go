package profiles

import (
	"context"
	"path/filepath"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

var tracer = otel.Tracer("github.com/medius-platform/medius/services/job-worker/internal/profiles")

// toolSpan starts the span of one external tool run ("tool ffprobe"), a child
// of the job's execute span, so a job's trace shows how long the engine
// itself took. end records the run's error.
func toolSpan(ctx context.Context, tool string) (context.Context, func(error)) {
	name := filepath.Base(tool)
	ctx, span := tracer.Start(ctx, "tool "+name, trace.WithAttributes(attribute.String("medius.tool", name)))
	return ctx, func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}
