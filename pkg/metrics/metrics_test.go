package metrics

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// collect installs a meter provider with a manual reader for one test.
func collect(t *testing.T) func() map[string]metricdata.Aggregation {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	prev := otel.GetMeterProvider()
	otel.SetMeterProvider(mp)
	t.Cleanup(func() { otel.SetMeterProvider(prev); _ = mp.Shutdown(context.Background()) })
	return func() map[string]metricdata.Aggregation {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		out := map[string]metricdata.Aggregation{}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				out[m.Name] = m.Data
			}
		}
		return out
	}
}

func gaugeValue(t *testing.T, a metricdata.Aggregation, attr attribute.KeyValue) int64 {
	t.Helper()
	g, ok := a.(metricdata.Gauge[int64])
	if !ok {
		t.Fatalf("not an int64 gauge: %T", a)
	}
	for _, dp := range g.DataPoints {
		if v, ok := dp.Attributes.Value(attr.Key); ok && v == attr.Value {
			return dp.Value
		}
	}
	t.Fatalf("no data point with %v in %+v", attr, g.DataPoints)
	return 0
}

// TestWorkerLoad: each scrape reads the runner's in-flight count now.
func TestWorkerLoad(t *testing.T) {
	read := collect(t)
	var n int32 = 3
	if _, err := RegisterWorkerLoad("transcode", 8, func() int32 { return n }); err != nil {
		t.Fatal(err)
	}
	svc := attribute.String("service", "transcode")
	got := read()
	if v := gaugeValue(t, got["medius.worker.jobs.in_flight"], svc); v != 3 {
		t.Errorf("in flight %d, want 3", v)
	}
	if v := gaugeValue(t, got["medius.worker.capacity"], svc); v != 8 {
		t.Errorf("capacity %d, want 8", v)
	}
	n = 0
	if v := gaugeValue(t, read()["medius.worker.jobs.in_flight"], svc); v != 0 {
		t.Errorf("in flight %d after the jobs ended, want 0", v)
	}
}

func TestWebhooks(t *testing.T) {
	read := collect(t)
	w, err := NewWebhooks()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	w.Delivered(ctx, "acme")
	w.Delivered(ctx, "acme")
	w.Failed(ctx, "acme", "timeout")
	got := read()
	sum := func(name string) int64 {
		s, ok := got[name].(metricdata.Sum[int64])
		if !ok {
			t.Fatalf("%s: not an int64 sum: %T", name, got[name])
		}
		var total int64
		for _, dp := range s.DataPoints {
			if v, _ := dp.Attributes.Value("tenant"); v.AsString() == "acme" {
				total += dp.Value
			}
		}
		return total
	}
	if d, f := sum("medius.webhook.deliveries"), sum("medius.webhook.failures"); d != 2 || f != 1 {
		t.Errorf("deliveries %d failures %d, want 2 and 1", d, f)
	}
}
