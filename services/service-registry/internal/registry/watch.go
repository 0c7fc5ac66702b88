package registry

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/nats-io/nats.go/jetstream"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Watcher turns changes under the instances prefix into
// ServiceInstanceChanged events on bus.SubjectInstance(service). Because the
// event is derived from etcd (not from the RPC that caused it), lease
// expiries are reported too, and every registry replica publishes the same
// events with the same message ids ("instance-<id>-<revision>"), which
// JetStream de-duplicates.
type Watcher struct {
	cli       *clientv3.Client
	js        jetstream.JetStream
	published metric.Int64Counter
	// retryWait is the pause before re-watching or re-publishing after an
	// error.
	retryWait time.Duration
	ready     chan struct{}
}

// NewWatcher publishes instance changes seen by cli on js.
func NewWatcher(cli *clientv3.Client, js jetstream.JetStream) *Watcher {
	c, err := otel.Meter("medius/service-registry").Int64Counter("medius_registry_instance_events",
		metric.WithDescription("ServiceInstanceChanged events published, by kind"))
	if err != nil {
		// Only a bad instrument name fails; the global meter never does.
		slog.Warn("instance events counter", "err", err)
	}
	return &Watcher{cli: cli, js: js, published: c, retryWait: 250 * time.Millisecond, ready: make(chan struct{})}
}

// Ready is closed once Run knows the revision it watches from: every change
// made after that is published.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Run watches from the current revision until ctx ends. A broken watch is
// resumed after the last revision handled; if that revision has been
// compacted away, it restarts from the current one (the events in between
// are lost, which subscribers tolerate because instances heart-beat and the
// registry can be listed).
func (w *Watcher) Run(ctx context.Context) error {
	rev, err := w.currentRevision(ctx)
	if err != nil {
		return nil // ctx ended
	}
	close(w.ready)
	for {
		rev = w.watch(ctx, rev)
		if ctx.Err() != nil {
			return nil
		}
		if !sleep(ctx, w.retryWait) {
			return nil
		}
	}
}

// watch handles events from revision rev on and returns the revision to
// resume from when the watch ends.
func (w *Watcher) watch(ctx context.Context, rev int64) int64 {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// WithRequireLeader: a member cut off from the cluster ends the watch
	// instead of going silent.
	wch := w.cli.Watch(clientv3.WithRequireLeader(wctx), InstancesPrefix,
		clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(rev))
	for resp := range wch {
		if resp.CompactRevision != 0 {
			slog.WarnContext(ctx, "instance watch compacted; restarting from the current revision",
				"from", rev, "compacted", resp.CompactRevision)
			cur, err := w.currentRevision(ctx)
			if err != nil {
				return rev
			}
			return cur
		}
		if err := resp.Err(); err != nil {
			slog.WarnContext(ctx, "instance watch failed; resuming", "rev", rev, "err", err)
			return rev
		}
		for _, ev := range resp.Events {
			if !w.publish(ctx, ev) {
				return rev // ctx ended
			}
			rev = ev.Kv.ModRevision + 1
		}
	}
	if ctx.Err() == nil {
		slog.WarnContext(ctx, "instance watch closed; resuming", "rev", rev)
	}
	return rev
}

// currentRevision returns the revision after the store's current one,
// retrying until etcd answers or ctx ends.
func (w *Watcher) currentRevision(ctx context.Context) (int64, error) {
	for {
		sctx, cancel := storeCtx(ctx)
		resp, err := w.cli.Get(sctx, InstancesPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		cancel()
		if err == nil {
			return resp.Header.Revision + 1, nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		slog.WarnContext(ctx, "etcd not answering; instance watch waits", "err", err)
		if !sleep(ctx, w.retryWait) {
			return 0, ctx.Err()
		}
	}
}

// publish sends the event for ev, retrying until NATS takes it: dropping it
// would leave subscribers believing a dead instance is up. It returns false
// only when ctx ended first.
func (w *Watcher) publish(ctx context.Context, ev *clientv3.Event) bool {
	change, ok := instanceChange(ctx, ev)
	if !ok {
		return true
	}
	inst := change.GetInstance()
	subject := bus.SubjectInstance(inst.GetService())
	// A span per event ties the log lines to the trace carried in the NATS
	// headers to whoever consumes the event.
	ctx, span := otel.Tracer("medius/service-registry").Start(ctx, "publish "+change.GetKind().String(),
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("medius.instance", inst.GetId()), attribute.String("messaging.destination.name", subject)))
	defer span.End()
	msgID := "instance-" + inst.GetId() + "-" + strconv.FormatInt(ev.Kv.ModRevision, 10)
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := bus.Publish(pctx, w.js, subject, msgID, change)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return false
		}
		slog.WarnContext(ctx, "publishing instance change failed; retrying", "instance", inst.GetId(), "subject", subject, "err", err)
		if !sleep(ctx, w.retryWait) {
			return false
		}
	}
	if w.published != nil {
		w.published.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", change.GetKind().String())))
	}
	slog.InfoContext(ctx, "instance changed", "kind", change.GetKind().String(), "instance", inst.GetId(), "instance_service", inst.GetService(), "rev", ev.Kv.ModRevision)
	return true
}

// instanceChange builds the event for one etcd event: a create is UP, a
// modification UPDATED and a delete (deregistration or lease expiry) DOWN,
// carrying the instance as it was last stored.
func instanceChange(ctx context.Context, ev *clientv3.Event) (*eventsv1.ServiceInstanceChanged, bool) {
	var (
		kind eventsv1.ServiceInstanceChanged_Kind
		src  *mvccpb.KeyValue
	)
	switch {
	case ev.Type == clientv3.EventTypeDelete:
		kind, src = eventsv1.ServiceInstanceChanged_KIND_DOWN, ev.PrevKv
	case ev.IsCreate():
		kind, src = eventsv1.ServiceInstanceChanged_KIND_UP, ev.Kv
	default:
		kind, src = eventsv1.ServiceInstanceChanged_KIND_UPDATED, ev.Kv
	}
	key := string(ev.Kv.Key)
	if src == nil {
		// No previous value (compacted): the service, hence the subject, is
		// unknown.
		slog.WarnContext(ctx, "instance change without a value; not published", "key", key, "kind", kind.String())
		return nil, false
	}
	inst := new(registryv1.ServiceInstance)
	err := decode(src.Value, inst)
	if err == nil && inst.GetService() == "" {
		err = errors.New("instance without service")
	}
	if err != nil {
		warnCorrupt(ctx, src.Key, err)
		return nil, false
	}
	if inst.GetId() == "" {
		inst.Id = strings.TrimPrefix(key, InstancesPrefix)
	}
	return &eventsv1.ServiceInstanceChanged{Kind: kind, Instance: inst}, true
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
