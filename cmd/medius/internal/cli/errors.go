package cli

import (
	"fmt"

	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/grpc/status"
)

// Describe renders an error for a person: a gRPC status becomes its problem
// title and detail, with the field at fault.
func Describe(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	p := problem.FromStatus(st)
	msg := fmt.Sprintf("%s: %s", p.Title, p.Detail)
	if p.Field != "" {
		msg += fmt.Sprintf(" (field %s)", p.Field)
	}
	return msg
}
