// Package problem is the one place where Medius errors become wire errors: a
// domain error carries a canonical gRPC code, an RFC 7807 problem type and
// the field at fault; gRPC clients get a status with ErrorInfo/BadRequest
// details and REST clients get the same as application/problem+json.
package problem

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
)

// TypePrefix starts every Medius problem type URI.
const TypePrefix = "urn:medius:problem:"

// Error is a domain error with everything a client needs to act on it.
type Error struct {
	Code   codes.Code
	Type   string // short slug, e.g. "profile-not-found"
	Title  string
	Detail string
	Field  string
	Err    error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Detail + ": " + e.Err.Error()
	}
	return e.Detail
}

func (e *Error) Unwrap() error { return e.Err }

// GRPCStatus lets status.FromError and grpc-go turn e into a status.
func (e *Error) GRPCStatus() *status.Status {
	st := status.New(e.Code, e.Detail)
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: e.Type, Domain: "medius", Metadata: map[string]string{"title": e.Title}}}
	if e.Field != "" {
		details = append(details, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: e.Field, Description: e.Detail}}})
	}
	if withDetails, err := st.WithDetails(details...); err == nil {
		return withDetails
	}
	return st
}

// Problem is e as a problem detail message.
func (e *Error) Problem() *jobsv1.Problem {
	return &jobsv1.Problem{Type: TypePrefix + e.Type, Title: e.Title, Detail: e.Detail, Field: e.Field, Status: int32(HTTPStatus(e.Code))}
}

// New makes a domain error.
func New(code codes.Code, typ, title, detail string) *Error {
	return &Error{Code: code, Type: typ, Title: title, Detail: detail}
}

// InvalidArgument names the field at fault.
func InvalidArgument(field, format string, args ...any) *Error {
	return &Error{Code: codes.InvalidArgument, Type: "invalid-argument", Title: "Invalid argument", Detail: fmt.Sprintf(format, args...), Field: field}
}

// NotFound says what was not found.
func NotFound(kind, id string) *Error {
	return &Error{Code: codes.NotFound, Type: kind + "-not-found", Title: "Not found", Detail: fmt.Sprintf("%s %q not found", kind, id)}
}

// Unauthenticated refuses missing or bad credentials.
func Unauthenticated(detail string) *Error {
	return &Error{Code: codes.Unauthenticated, Type: "unauthenticated", Title: "Unauthenticated", Detail: detail}
}

// FailedPrecondition refuses an operation the resource's state forbids.
func FailedPrecondition(typ, detail string) *Error {
	return &Error{Code: codes.FailedPrecondition, Type: typ, Title: "Failed precondition", Detail: detail}
}

// ResourceExhausted refuses work beyond a quota.
func ResourceExhausted(typ, detail string) *Error {
	return &Error{Code: codes.ResourceExhausted, Type: typ, Title: "Quota exceeded", Detail: detail}
}

// Unavailable says a dependency cannot be reached now; the client may retry.
func Unavailable(detail string, err error) *Error {
	return &Error{Code: codes.Unavailable, Type: "unavailable", Title: "Service unavailable", Detail: detail, Err: err}
}

// ToStatus maps any error to a gRPC status error: domain errors keep their
// code, context errors pass through as Canceled/DeadlineExceeded, a status
// error is kept, and anything else is logged and becomes Internal without
// leaking its text.
func ToStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var de *Error
	if errors.As(err, &de) {
		return de.GRPCStatus().Err()
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	slog.ErrorContext(ctx, "internal error", "err", err)
	return status.Error(codes.Internal, "internal error")
}

// UnaryServerInterceptor applies ToStatus to every unary handler's error.
func UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		return resp, ToStatus(ctx, err)
	}
}

// StreamServerInterceptor applies ToStatus to every streaming handler's error.
func StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return ToStatus(ss.Context(), handler(srv, ss))
	}
}

// FromStatus turns a gRPC status back into a problem detail.
func FromStatus(st *status.Status) *jobsv1.Problem {
	p := &jobsv1.Problem{
		Type:   TypePrefix + defaultType(st.Code()),
		Title:  defaultTitle(st.Code()),
		Detail: st.Message(),
		Status: int32(HTTPStatus(st.Code())),
	}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.Reason != "" {
				p.Type = TypePrefix + d.Reason
			}
			if t := d.Metadata["title"]; t != "" {
				p.Title = t
			}
		case *errdetails.BadRequest:
			if len(d.FieldViolations) > 0 {
				p.Field = d.FieldViolations[0].Field
			}
		}
	}
	return p
}
