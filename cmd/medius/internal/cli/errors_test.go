package cli

import (
	"errors"
	"testing"

	"github.com/medius-platform/medius/pkg/problem"
)

func TestDescribe(t *testing.T) {
	err := problem.InvalidArgument("job.profile", `unknown profile "X"`).GRPCStatus().Err()
	if got, want := Describe(err), `Invalid argument: unknown profile "X" (field job.profile)`; got != want {
		t.Errorf("Describe = %q, want %q", got, want)
	}
	if got := Describe(errors.New("plain")); got != "plain" {
		t.Errorf("Describe(plain) = %q", got)
	}
}
