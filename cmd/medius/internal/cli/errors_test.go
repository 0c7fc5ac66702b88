package cli

import (
	"errors"
	"testing"

	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"field at fault", problem.InvalidArgument("job.profile", `unknown profile "X"`).GRPCStatus().Err(),
			`Invalid argument (invalid-argument): unknown profile "X" (field job.profile)`},
		// The title is shared by several quotas; the type says which.
		{"typed problem", problem.ResourceExhausted("quota-max-concurrent-jobs", "tenant t runs 2 jobs, at most 2 at once").GRPCStatus().Err(),
			`Quota exceeded (quota-max-concurrent-jobs): tenant t runs 2 jobs, at most 2 at once`},
		// A status without problem details (from grpc-go itself, say)
		// gets the type and title of its code, as REST clients do.
		{"bare status", status.Error(codes.Unavailable, "connection refused"),
			`Service Unavailable (unavailable): connection refused`},
		// A tool's output in the detail does not break the line.
		{"multi-line detail", problem.New(codes.Internal, "tool-failed", "Tool failed", "ffprobe failed:\nInvalid data\n").GRPCStatus().Err(),
			`Tool failed (tool-failed): ffprobe failed: Invalid data`},
		{"not a status", errors.New("plain"), "plain"},
	} {
		if got := Describe(tc.err); got != tc.want {
			t.Errorf("%s: Describe = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// A REST problem+json answer (tenants, keys, usage) reads as a gRPC one.
func TestRESTErrorNamesType(t *testing.T) {
	e := &restError{Status: 403, Type: problem.TypePrefix + "forbidden", Title: "Forbidden", Detail: "admin credential required"}
	if got, want := e.Error(), "Forbidden (forbidden): admin credential required"; got != want {
		t.Errorf("restError = %q, want %q", got, want)
	}
}
