// Package bus is Medius's NATS JetStream layer: the streams, subjects and KV
// buckets every service agrees on, publishing with a message id (JetStream
// de-duplication) and the trace context in headers, and consuming with ack,
// retry and termination decided by the handler's error.
package bus

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"google.golang.org/protobuf/proto"
)

// Streams and buckets.
const (
	// StreamEvents carries every event between services (limits retention:
	// several durable consumers read it).
	StreamEvents = "MEDIUS_EVENTS"
	// StreamWork carries work items to workers; a message is removed once a
	// worker acks it.
	StreamWork = "MEDIUS_WORK"

	BucketJobs       = "medius_jobs"
	BucketExecutions = "medius_executions"
)

// Subjects.
const (
	SubjectJobCreated    = "medius.events.job.created"
	SubjectJobCancel     = "medius.events.job.cancel"
	SubjectJobRestart    = "medius.events.job.restart"
	subjectJobStatus     = "medius.events.job.status."
	SubjectJobStatusAll  = subjectJobStatus + "*"
	subjectExecution     = "medius.events.exec."
	SubjectExecutionAll  = subjectExecution + "*"
	subjectInstance      = "medius.events.instance."
	SubjectInstanceAll   = subjectInstance + "*"
	subjectWork          = "medius.work."
	subjectCancelControl = "medius.control.cancel."
	subjectStopControl   = "medius.control.stop."
)

// SubjectJobStatus is where the processor reports changes of job id.
func SubjectJobStatus(jobID string) string { return subjectJobStatus + jobID }

// SubjectExecution is where workers report on job id's attempts.
func SubjectExecution(jobID string) string { return subjectExecution + jobID }

// SubjectInstance is where the registry reports instance changes of a service.
func SubjectInstance(service string) string { return subjectInstance + service }

// SubjectWork is where the work item of job id for service goes. One
// subject per job lets the processor withdraw a job's item from the queue
// (a lost attempt, a cancel, a move to another service) with a purge of
// that subject, so no worker ever runs an attempt that is over.
func SubjectWork(service, jobID string) string { return subjectWork + service + "." + jobID }

// WorkQueue is the filter of service's work queue: every job's item.
func WorkQueue(service string) string { return subjectWork + service + ".*" }

// WorkService returns the service whose queue subject is on, if any.
func WorkService(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, subjectWork)
	if !ok {
		return "", false
	}
	service, _, ok := strings.Cut(rest, ".")
	return service, ok && service != ""
}

// SubjectCancel is the core-NATS subject a worker running job id listens on to
// be told to stop it. Not persisted: a worker that misses it is stopped by the
// processor's timeout or a later resend.
func SubjectCancel(jobID string) string { return subjectCancelControl + jobID }

// SubjectStopAttempt is the core-NATS subject a worker running job id listens
// on to be told to stop the attempts a JobCancelRequested names (attempts and
// earlier): the processor has ended them (a worker declared lost that was
// only cut off, an item moved to another service) while their worker still
// runs them. Unlike SubjectCancel, it leaves the job's later attempts alone,
// and a worker that does not know it ignores it, as before.
func SubjectStopAttempt(jobID string) string { return subjectStopControl + jobID }

// Connect dials NATS and keeps reconnecting forever: a NATS restart must never
// take a service down with it.
//
// While it reconnects, a publish fails at once instead of waiting in the
// client's reconnect buffer: a buffered write is sent whenever the connection
// comes back, long after its caller gave up on it and told its own client so
// (a job created minutes after its CreateJob failed, billed and run). Every
// publisher already retries, or is redelivered, on an error; Provision, the
// first thing each service does, retries until NATS is there.
func Connect(url, name string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				slog.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { slog.Info("nats reconnected", "url", c.ConnectedUrl()) }),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("connect nats %s: %w", url, err)
	}
	// An async publish whose ack never comes (a lost reply) fails after
	// this instead of staying in the client's pending list.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(30*time.Second))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// Provision creates or updates the streams and buckets. Every service calls it
// on start; it is idempotent, so no start-up order is needed between them.
func Provision(ctx context.Context, js jetstream.JetStream) error {
	streams := []jetstream.StreamConfig{{
		Name:       StreamEvents,
		Subjects:   []string{"medius.events.>"},
		Storage:    jetstream.FileStorage,
		Retention:  jetstream.LimitsPolicy,
		MaxAge:     7 * 24 * time.Hour,
		Duplicates: 10 * time.Minute,
	}, {
		Name:       StreamWork,
		Subjects:   []string{subjectWork + ">"},
		Storage:    jetstream.FileStorage,
		Retention:  jetstream.WorkQueuePolicy,
		Duplicates: 10 * time.Minute,
	}}
	for _, cfg := range streams {
		if err := retry(ctx, func() error {
			_, err := js.CreateOrUpdateStream(ctx, cfg)
			return err
		}); err != nil {
			return fmt.Errorf("provision stream %s: %w", cfg.Name, err)
		}
	}
	for _, b := range []string{BucketJobs, BucketExecutions} {
		if err := retry(ctx, func() error {
			_, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b, Storage: jetstream.FileStorage, History: 1})
			return err
		}); err != nil {
			return fmt.Errorf("provision bucket %s: %w", b, err)
		}
	}
	return nil
}

// retry runs f until it succeeds or ctx ends: right after a (re)start NATS may
// not have JetStream ready yet.
func retry(ctx context.Context, f func() error) error {
	var err error
	for {
		if err = f(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// NewMsg is m as a message on subject, as every Medius event travels: its
// protobuf type in HeaderType and the trace context of ctx in the headers.
func NewMsg(ctx context.Context, subject string, m proto.Message) (*nats.Msg, error) {
	data, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal %T: %w", m, err)
	}
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	msg.Header.Set(HeaderType, string(m.ProtoReflect().Descriptor().FullName()))
	otel.GetTextMapPropagator().Inject(ctx, HeaderCarrier(msg.Header))
	return msg, nil
}

// Publish sends m on subject with msgID as the JetStream message id, so a
// retried publish of the same logical event is stored once. The trace context
// of ctx travels in the headers.
func Publish(ctx context.Context, js jetstream.JetStream, subject, msgID string, m proto.Message) error {
	msg, err := NewMsg(ctx, subject, m)
	if err != nil {
		return err
	}
	opts := []jetstream.PublishOpt{}
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	if _, err := js.PublishMsg(ctx, msg, opts...); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

// PublishCore sends m on a core NATS subject (not persisted), with trace context.
func PublishCore(ctx context.Context, nc *nats.Conn, subject string, m proto.Message) error {
	msg, err := NewMsg(ctx, subject, m)
	if err != nil {
		return err
	}
	if err := nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

// KVSubject is the subject the value of key in bucket is stored under. A
// publish there is a KV write, so a KV create can share a round trip with
// other publishes: PublishMsgAsync to it with
// jetstream.WithExpectLastSequencePerSubject(0) writes what KeyValue.Create
// does (without Create's taking over of a deleted key), and a refusal is
// IsWrongLastSequence.
func KVSubject(bucket, key string) string { return "$KV." + bucket + "." + key }

// IsWrongLastSequence reports whether err is JetStream refusing a write
// whose expected last sequence did not hold: a KV create of a key that
// exists, or an update on a stale revision (10071; replicated streams answer
// 10164).
func IsWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return true
	}
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

// HeaderType names the protobuf message type of a payload.
const HeaderType = "Medius-Type"

// HeaderReannounced ("true") marks a JobCreated published again by the
// mediator's sweep rather than by CreateJob. Its job may have been handled
// long ago, beyond the duplicate window, so the processor reads the job's
// record before acting on it; only a first announcement may be acted on
// before the record is known.
const HeaderReannounced = "Medius-Reannounced"

// ContextFromHeader returns ctx carrying the trace context found in h.
func ContextFromHeader(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, HeaderCarrier(h))
}

// Decode unmarshals a message payload into m.
func Decode(data []byte, m proto.Message) error {
	if err := proto.Unmarshal(data, m); err != nil {
		return Permanent(fmt.Errorf("decode %T: %w", m, err))
	}
	return nil
}

// permanentError marks a message that can never be handled (undecodable,
// refers to something that does not exist): it is terminated, not redelivered.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent wraps err so the consumer terminates the message instead of
// retrying it.
func Permanent(err error) error { return permanentError{err} }

// IsPermanent reports whether err was marked Permanent.
func IsPermanent(err error) bool { return errors.As(err, new(permanentError)) }

// retryError asks for redelivery after a set delay, quietly: the message is
// fine but its time has not come (a job waiting for a worker to appear).
type retryError struct {
	err   error
	after time.Duration
}

func (e retryError) Error() string { return e.err.Error() }
func (e retryError) Unwrap() error { return e.err }

// ErrKept is what a Handler returns for a message it keeps to settle itself
// later (it acks it once done with it): the consumer leaves it unsettled. A
// kept message never settled is redelivered after AckWait, as if its
// handler had died. (Consume only: what a ConsumeBatches handler keeps is
// handed back, as its result must settle its whole group.)
var ErrKept = errors.New("kept by its handler, to settle later")

// RetryAfter wraps err so the consumer redelivers the message after d and
// logs it at debug level only.
func RetryAfter(d time.Duration, err error) error { return retryError{err: err, after: d} }

// backoff is the redelivery delay after a handler failure: 250 ms doubling
// with each delivery, at most 10 s, so a failing dependency is not hammered.
func backoff(delivered uint64) time.Duration {
	d := 250 * time.Millisecond
	for i := uint64(1); i < delivered && d < 10*time.Second; i++ {
		d *= 2
	}
	return min(d, 10*time.Second)
}

// Handler handles one message. nil acks it; a Permanent error terminates it;
// RetryAfter redelivers it after its delay; any other error naks it for
// redelivery after a growing delay.
type Handler func(ctx context.Context, msg jetstream.Msg) error

// ConsumerConfig is a durable pull consumer on a stream.
type ConsumerConfig struct {
	Stream  string
	Durable string
	Filter  []string
	// AckWait is how long a message may be held before redelivery.
	AckWait time.Duration
	// MaxAckPending bounds the messages in flight across all replicas.
	MaxAckPending int
	// Concurrency is how many messages this process handles at once
	// (default 1: one after the other). Above 1 the handler must tolerate
	// messages of one subject handled out of order, unless
	// OrderedBySubject.
	Concurrency int
	// OrderedBySubject handles the messages of one subject one after the
	// other, in stream order, and those of different subjects in parallel
	// (Concurrency lanes, a subject always on the same lane).
	OrderedBySubject bool
	// LaneDepth is how many messages may wait in each OrderedBySubject lane
	// (default 16). With ConsumeBatches, deeper lanes let more of a
	// subject's messages be handled together under backlog; MaxAckPending
	// should leave room for them (Concurrency × LaneDepth).
	LaneDepth int
}

// Consume runs handler on every message of the durable consumer until ctx
// ends. Several processes consuming the same durable share the work. It
// returns only when ctx ends or the consumer cannot be set up.
func Consume(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig, handler Handler) error {
	return consume(ctx, js, cfg, false, func(ctx context.Context, msgs []jetstream.Msg) error {
		return handler(ctx, msgs[0])
	})
}

// BatchHandler handles messages of one subject together, oldest first. Its
// result settles every one of them as a Handler's settles its message: nil
// acks them all, a Permanent error terminates them all, any other error
// hands them all back for redelivery.
type BatchHandler func(ctx context.Context, msgs []jetstream.Msg) error

// ConsumeBatches is Consume for an OrderedBySubject consumer (it sets the
// option) whose handler can take a subject's messages together: when
// several messages of a subject are already waiting in its lane, they are
// handed over in one call (in stream order) instead of one after the other.
// It only groups messages under backlog, when work is waiting anyway; an idle
// consumer hands each message over as it comes.
func ConsumeBatches(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig, handler BatchHandler) error {
	cfg.OrderedBySubject = true
	cfg.Concurrency = max(cfg.Concurrency, 1)
	return consume(ctx, js, cfg, true, handler)
}

func consume(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig, batches bool, handler BatchHandler) error {
	cons, err := EnsureConsumer(ctx, js, cfg)
	if err != nil {
		return err
	}
	log := slog.With("consumer", cfg.Durable)
	// Handlers run on a context that survives ctx: on shutdown the drain
	// below lets the message in hand finish and be acked instead of failing
	// half-way. AckWait bounds it, since past that the message is
	// redelivered anyway.
	bound := cfg.AckWait
	if bound == 0 {
		bound = defaultAckWait
	}
	hctx := context.WithoutCancel(ctx)
	// Above Concurrency 1 each message is handled on its own goroutine,
	// at most Concurrency at once; inFlight lets the drain wait for them.
	var inFlight sync.WaitGroup
	var slots chan struct{}
	if cfg.Concurrency > 1 {
		slots = make(chan struct{}, cfg.Concurrency)
	}
	// handleGroup runs handler on msgs (one message, or a subject's
	// messages in stream order) and settles each as its result says.
	handleGroup := func(msgs []jetstream.Msg) {
		// The newest message's trace: the handling brings the subject to
		// what it says.
		last := msgs[len(msgs)-1]
		mctx, cancel := context.WithTimeout(ContextFromHeader(hctx, last.Headers()), bound)
		defer cancel()
		err := handler(mctx, msgs)
		var retry retryError
		switch {
		case errors.Is(err, ErrKept) && !batches:
			// Its handler settles it.
		case errors.Is(err, ErrKept):
			// A group is settled by its handler's result only.
			log.ErrorContext(mctx, "a batch handler kept its messages: handed back", "subject", last.Subject(), "messages", len(msgs))
			for _, msg := range msgs {
				delivered := uint64(1)
				if md, mdErr := msg.Metadata(); mdErr == nil {
					delivered = md.NumDelivered
				}
				_ = msg.NakWithDelay(backoff(delivered))
			}
		case err == nil:
			for _, msg := range msgs {
				if err := msg.Ack(); err != nil {
					log.WarnContext(mctx, "ack failed", "subject", msg.Subject(), "err", err)
				}
			}
		case IsPermanent(err):
			log.ErrorContext(mctx, "message dropped", "subject", last.Subject(), "messages", len(msgs), "err", err)
			for _, msg := range msgs {
				_ = msg.Term()
			}
		case errors.As(err, &retry):
			log.DebugContext(mctx, "message deferred", "subject", last.Subject(), "messages", len(msgs), "after", retry.after, "err", err)
			for _, msg := range msgs {
				_ = msg.NakWithDelay(retry.after)
			}
		default:
			// Each message's delay grows with its own deliveries.
			var delivered uint64 = 1
			var delay time.Duration
			for _, msg := range msgs {
				delivered = 1
				if md, mdErr := msg.Metadata(); mdErr == nil {
					delivered = md.NumDelivered
				}
				delay = backoff(delivered)
				_ = msg.NakWithDelay(delay)
			}
			log.WarnContext(mctx, "message will be retried", "subject", last.Subject(), "messages", len(msgs), "delivery", delivered, "after", delay, "err", err)
		}
	}
	handle := func(msg jetstream.Msg) { handleGroup([]jetstream.Msg{msg}) }
	var lanes []chan jetstream.Msg
	depth := cfg.LaneDepth
	if depth <= 0 {
		depth = defaultLaneDepth
	}
	if cfg.OrderedBySubject && (cfg.Concurrency > 1 || batches) {
		lanes = make([]chan jetstream.Msg, max(cfg.Concurrency, 1))
		for i := range lanes {
			lanes[i] = make(chan jetstream.Msg, depth)
			inFlight.Go(func() {
				for msg := range lanes[i] {
					if !batches {
						handle(msg)
						continue
					}
					for _, group := range bySubject(takeWaiting(lanes[i], msg)) {
						handleGroup(group)
					}
				}
			})
		}
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		switch {
		case lanes != nil:
			h := fnv.New32a()
			_, _ = h.Write([]byte(msg.Subject()))
			lanes[h.Sum32()%uint32(len(lanes))] <- msg
		case slots == nil:
			handle(msg)
		default:
			slots <- struct{}{}
			inFlight.Add(1)
			go func() {
				defer func() { <-slots; inFlight.Done() }()
				handle(msg)
			}()
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if ctx.Err() == nil && !errors.Is(err, jetstream.ErrNoHeartbeat) {
			log.Debug("consume", "err", err)
		}
	}))
	if err != nil {
		return fmt.Errorf("consume %s: %w", cfg.Durable, err)
	}
	<-ctx.Done()
	// Drain lets the handler in progress finish and ack before we return.
	cc.Drain()
	<-cc.Closed()
	for _, l := range lanes {
		close(l) // no more messages come once the consumer is closed
	}
	inFlight.Wait()
	return nil
}

const defaultAckWait = 30 * time.Second

const defaultLaneDepth = 16

// takeWaiting returns first and the messages already waiting in lane behind
// it, without waiting for more.
func takeWaiting(lane chan jetstream.Msg, first jetstream.Msg) []jetstream.Msg {
	msgs := []jetstream.Msg{first}
	for len(msgs) <= cap(lane) {
		select {
		case msg, ok := <-lane:
			if !ok {
				return msgs
			}
			msgs = append(msgs, msg)
		default:
			return msgs
		}
	}
	return msgs
}

// bySubject groups msgs by subject, each group in the order of msgs, the
// groups in the order of their first message.
func bySubject(msgs []jetstream.Msg) [][]jetstream.Msg {
	if len(msgs) == 1 {
		return [][]jetstream.Msg{msgs}
	}
	var groups [][]jetstream.Msg
	at := map[string]int{}
	for _, msg := range msgs {
		i, ok := at[msg.Subject()]
		if !ok {
			i = len(groups)
			at[msg.Subject()] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], msg)
	}
	return groups
}

// EnsureConsumer creates or updates the durable consumer, retrying while
// JetStream is not ready.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, cfg ConsumerConfig) (jetstream.Consumer, error) {
	if cfg.AckWait == 0 {
		cfg.AckWait = defaultAckWait
	}
	if cfg.MaxAckPending == 0 {
		cfg.MaxAckPending = 1000
	}
	cc := jetstream.ConsumerConfig{
		Durable:       cfg.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxAckPending: cfg.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	if len(cfg.Filter) == 1 {
		cc.FilterSubject = cfg.Filter[0]
	} else {
		cc.FilterSubjects = cfg.Filter
	}
	var cons jetstream.Consumer
	err := retry(ctx, func() error {
		var err error
		cons, err = js.CreateOrUpdateConsumer(ctx, cfg.Stream, cc)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", cfg.Durable, cfg.Stream, err)
	}
	return cons, nil
}
