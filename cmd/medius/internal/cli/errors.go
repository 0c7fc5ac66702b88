package cli

import (
	"fmt"
	"strings"

	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/grpc/status"
)

// Describe renders an error for a person: a gRPC status becomes its problem
// title, short type, detail and the field at fault, e.g.
// `Quota exceeded (quota-max-concurrent-jobs): ...`. The type is what a
// script or a support request can match on; the title alone is shared by
// many problems.
func Describe(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	p := problem.FromStatus(st)
	return problemLine(p.Title, p.Type, p.Detail, p.Field)
}

// problemLine is the one rendering of an RFC 7807 problem, for gRPC
// statuses and REST problem+json answers alike, so both read the same.
// It is kept on one line: a detail may carry a tool's multi-line output,
// and "medius: ..." on stderr is read (and grepped) as one line.
func problemLine(title, typ, detail, field string) string {
	msg := title
	if t := strings.TrimPrefix(typ, problem.TypePrefix); t != "" {
		msg += " (" + t + ")"
	}
	msg += ": " + detail
	if field != "" {
		msg += fmt.Sprintf(" (field %s)", field)
	}
	return oneLine(msg)
}
