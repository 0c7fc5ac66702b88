// Package registry is the service registry: service definitions, job profiles
// and live service instances kept in etcd, served over gRPC
// (registryv1.RegistryServiceServer), with instance changes published on NATS
// by Watcher.
//
// Keys and values follow docs/internals.md: protojson values under
// /medius/registry/{services,profiles,instances}/<name>; an instance is put on
// its own etcd lease, so an instance that stops heart-beating disappears
// without anyone having to notice it.
package registry

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Key prefixes in etcd (docs/internals.md).
const (
	KeyPrefix       = "/medius/registry/"
	ServicesPrefix  = KeyPrefix + "services/"
	ProfilesPrefix  = KeyPrefix + "profiles/"
	InstancesPrefix = KeyPrefix + "instances/"
)

// ServiceKey is the etcd key of service name's definition.
func ServiceKey(name string) string { return ServicesPrefix + name }

// ProfileKey is the etcd key of job profile name.
func ProfileKey(name string) string { return ProfilesPrefix + name }

// InstanceKey is the etcd key of instance id's registration.
func InstanceKey(id string) string { return InstancesPrefix + id }

// Limits on what a client may ask for.
const (
	// MaxTTL bounds a requested lease ttl: an instance that is gone for longer
	// than this is not worth routing jobs to.
	MaxTTL = time.Hour
	// heartbeatWriteInterval is the least time between two writes of an
	// instance's heartbeat data: keep-alives renew the lease on every call but
	// must not turn into an etcd write per job.
	heartbeatWriteInterval = time.Second
	// storeTimeout bounds one etcd operation issued by a request, so a stuck
	// etcd turns into an error instead of a hung RPC.
	storeTimeout = 5 * time.Second
	// casAttempts bounds read-modify-write retries under contention.
	casAttempts = 16
)

// Server implements registryv1.RegistryServiceServer on etcd.
type Server struct {
	registryv1.UnimplementedRegistryServiceServer

	cli        *clientv3.Client
	defaultTTL time.Duration
	now        func() time.Time
}

// NewServer serves the registry from cli. defaultTTL is the lease ttl of
// instances that register without asking for one.
func NewServer(cli *clientv3.Client, defaultTTL time.Duration) *Server {
	return &Server{cli: cli, defaultTTL: defaultTTL, now: time.Now}
}

var (
	marshalOpts = protojson.MarshalOptions{}
	// Unknown fields are dropped so an older registry can read what a newer
	// one wrote during a rolling upgrade.
	unmarshalOpts = protojson.UnmarshalOptions{DiscardUnknown: true}
)

func encode(m proto.Message) (string, error) {
	b, err := marshalOpts.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("encode %T: %w", m, err)
	}
	return string(b), nil
}

func decode(b []byte, m proto.Message) error {
	if err := unmarshalOpts.Unmarshal(b, m); err != nil {
		return fmt.Errorf("decode %T: %w", m, err)
	}
	return nil
}

// storeCtx bounds one etcd call made on behalf of ctx.
func storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, storeTimeout)
}

// warnCorrupt logs a value that cannot be decoded: lists skip it rather than
// failing every caller because of one bad record.
func warnCorrupt(ctx context.Context, key []byte, err error) {
	slog.WarnContext(ctx, "skipping undecodable registry record", "key", string(key), "err", err)
}
