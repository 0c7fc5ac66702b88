// Package grpcx builds Medius gRPC servers and clients the same way in every
// service: OpenTelemetry stats handlers (trace context in metadata), domain
// errors mapped to status codes in one place (pkg/problem), and the standard
// gRPC health service.
package grpcx

import (
	"fmt"

	"github.com/medius-platform/medius/pkg/problem"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// MaxMessageBytes bounds a request: jobs carry locators, not media.
const MaxMessageBytes = 4 << 20

// NewServer returns a server with tracing, error mapping and health
// registered; extra options are appended (e.g. auth interceptors, which run
// after error mapping so their errors are mapped too).
func NewServer(extra ...grpc.ServerOption) (*grpc.Server, *health.Server) {
	opts := append([]grpc.ServerOption{
		grpc.StatsHandler(otelgrpc.NewServerHandler()),
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.ChainUnaryInterceptor(problem.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(problem.StreamServerInterceptor()),
	}, extra...)
	s := grpc.NewServer(opts...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	return s, hs
}

// Dial connects to a Medius gRPC service (plaintext on the cluster network;
// put mTLS in front in production) with tracing.
func Dial(addr string, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler()),
	}, extra...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return cc, nil
}
