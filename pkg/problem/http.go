package problem

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ContentType of problem responses (RFC 7807).
const ContentType = "application/problem+json"

// HTTPStatus maps a gRPC code to its HTTP status: grpc-gateway's mapping,
// except that FailedPrecondition is 409 Conflict (the resource's state
// forbids the operation, e.g. cancelling a finished job), not 400, so clients
// can tell it from bad input.
func HTTPStatus(c codes.Code) int {
	if c == codes.FailedPrecondition {
		return http.StatusConflict
	}
	return runtime.HTTPStatusFromCode(c)
}

// Write writes p as application/problem+json with its status.
func Write(w http.ResponseWriter, p *jobsv1.Problem) {
	w.Header().Set("Content-Type", ContentType)
	w.WriteHeader(int(p.Status))
	_, _ = w.Write(append(JSON(p), '\n'))
}

// JSON is p's problem JSON body (RFC 7807).
func JSON(p *jobsv1.Problem) []byte {
	body := map[string]any{"type": p.Type, "title": p.Title, "status": p.Status, "detail": p.Detail}
	if p.Field != "" {
		body["field"] = p.Field
	}
	b, _ := json.Marshal(body) // strings and a number: cannot fail
	return b
}

// FromError is err (mapped through ToStatus) as a problem detail.
func FromError(ctx context.Context, err error) *jobsv1.Problem {
	st, _ := status.FromError(ToStatus(ctx, err))
	return FromStatus(st)
}

// WriteError writes err (mapped through ToStatus) as problem JSON.
func WriteError(ctx context.Context, w http.ResponseWriter, err error) {
	Write(w, FromError(ctx, err))
}

// GatewayErrorHandler is a grpc-gateway error handler answering with problem
// JSON. Errors the gateway raises itself (malformed JSON, unknown route
// parameters) arrive as InvalidArgument and get a 400 like any other.
func GatewayErrorHandler(ctx context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, err error) {
	st, _ := status.FromError(ToStatus(ctx, err))
	p := FromStatus(st)
	if st.Code() == codes.InvalidArgument && p.Type == TypePrefix+defaultType(codes.InvalidArgument) && isDecodeError(st.Message()) {
		p.Type, p.Title = TypePrefix+"malformed-body", "Malformed request body"
	}
	Write(w, p)
}

func defaultType(c codes.Code) string {
	return strings.ReplaceAll(strings.ToLower(snake(c.String())), "_", "-")
}

func defaultTitle(c codes.Code) string {
	if t := http.StatusText(HTTPStatus(c)); t != "" {
		return t
	}
	return c.String()
}

// snake turns "InvalidArgument" into "Invalid_Argument".
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && 'A' <= r && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// isDecodeError recognises the gateway's body decoding failures.
func isDecodeError(msg string) bool {
	for _, s := range []string{"unmarshal", "unexpected EOF", "invalid character", "syntax error", "unexpected token"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
