package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"go.opentelemetry.io/otel"
)

func TestLogsCarryTraceIDs(t *testing.T) {
	var buf bytes.Buffer
	tel, err := Setup(context.Background(), Config{ServiceName: "test", LogOutput: &buf})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())

	ctx, span := otel.Tracer("test").Start(context.Background(), "op")
	tel.Logger.InfoContext(ctx, "hello")
	span.End()

	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("log line is not JSON: %q", buf.String())
	}
	if rec["trace_id"] != span.SpanContext().TraceID().String() {
		t.Errorf("trace_id = %v, want %s", rec["trace_id"], span.SpanContext().TraceID())
	}
	if rec["service"] != "test" {
		t.Errorf("service = %v", rec["service"])
	}
}
