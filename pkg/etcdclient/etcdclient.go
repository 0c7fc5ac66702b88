// Package etcdclient builds the etcd client the Medius services use, with
// gRPC keepalive on, so that a connection that hangs without breaking is
// noticed.
//
// Without keepalive a watch or lease keepalive stream whose TCP connection
// stops carrying bytes without being closed (a network partition, an etcd
// host that died without sending RST, a NAT or conntrack entry that was
// dropped) is never torn down: the client keeps waiting on a stream that
// will never deliver, so the mediator's tenant watch (webhook secrets,
// profiles), the registry's leases and watches and the processor's election
// go stale silently. With keepalive, gRPC pings the server when the
// connection has been quiet and closes the connection when the ping is not
// answered; clientv3 then reopens the watch on a new connection from the
// revision it had reached, and the lease keepalive loop starts over.
//
// The values, and why:
//
//   - DialKeepAliveTime 10s: how long the connection may be silent before the
//     client pings. 10s is gRPC's floor (grpc-go raises smaller values to it)
//     and is above the minimum interval etcd servers accept between pings
//     (--grpc-keepalive-min-time, 5s by default); a client that pings more
//     often is sent GOAWAY too_many_pings and disconnected.
//   - DialKeepAliveTimeout 5s: how long an unanswered ping is waited for
//     before the connection is closed. A live etcd answers a ping at once
//     (the gRPC transport acks it; no request handling or raft is involved),
//     so 5s only trips on a connection that is really gone. gRPC also uses it as TCP_USER_TIMEOUT,
//     so data written to a dead peer fails within the same bound. A hung
//     connection is thus dropped about 15s after the last frame it carried.
//   - PermitWithoutStream false (the default, left so on purpose): the client
//     pings only while an RPC or stream is open on the connection. That
//     covers every case that can hang: watches and lease keepalives are
//     streams, and a unary call in flight is one too. etcd servers (the
//     etcd binary and embed alike) enforce PermitWithoutStream=false: pings
//     on a connection with no stream count as strikes, and the third strike
//     gets GOAWAY too_many_pings, which closes the connection and makes
//     grpc-go double the client's ping interval; so pinging idle
//     connections would churn them and weaken the keepalive it is meant to
//     provide.
//   - DialTimeout 5s, as the services passed before. Since etcd 3.7 client
//     creation does not block on connecting; the timeout bounds the auth
//     token fetch and seeds the first lease keepalive's timeout
//     (DialTimeout + 1s).
package etcdclient

import (
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The settings New applies; see the package documentation for why.
const (
	DialTimeout          = 5 * time.Second
	DialKeepAliveTime    = 10 * time.Second
	DialKeepAliveTimeout = 5 * time.Second
)

// Option changes how New builds the client.
type Option func(*clientv3.Config)

// WithLogger sets the client's zap logger; zap.NewNop() silences the client's
// connection chatter. Without it clientv3 builds its default logger.
func WithLogger(lg *zap.Logger) Option {
	return func(c *clientv3.Config) { c.Logger = lg }
}

// New returns an etcd client for endpoints with keepalive configured. It does
// not wait for etcd: like clientv3.New, it connects in the background and
// calls fail (or wait, as their context allows) until etcd answers. Errors
// come from clientv3.New unwrapped; the caller names the endpoints.
func New(endpoints []string, opts ...Option) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          DialTimeout,
		DialKeepAliveTime:    DialKeepAliveTime,
		DialKeepAliveTimeout: DialKeepAliveTimeout,
	}
	for _, o := range opts {
		o(&cfg)
	}
	return clientv3.New(cfg)
}
