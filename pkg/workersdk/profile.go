// Package worker runs job profiles for one worker instance: it takes work
// items from the service's JetStream work queue only when it has a free slot,
// reports the execution (RUNNING, progress, COMPLETED/FAILED/CANCELED) on the
// job's execution subject, honours cancel requests, and hands unfinished work
// back on shutdown. A profile is a Handler; adding one is writing a function.
package workersdk

import (
	"context"
	"errors"
	"fmt"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/problem"
	"google.golang.org/grpc/codes"
)

// WorkItem is what a handler is asked to do.
type WorkItem = eventsv1.WorkItem

// Handler runs one job of a profile. It reports progress (0-100) through
// progress, which is cheap and may be called often, and returns the output and
// the verified billable quantity (seconds of media). It must stop promptly
// when ctx ends (cancel, timeout, shutdown). A *problem.Error return becomes
// the execution's problem detail as is (see InputError, ToolError); any other
// error is reported as "execution-failed".
//
// ctx carries the job's locator roots (WorkItem.locator_roots, see
// locator.WithTenantRoots): resolve every locator through a
// locator.Resolver with ctx, or a ctx derived from it, and a file:// or
// s3:// locator outside the tenant's roots is refused (locator.ErrForbidden,
// which InputError reports as "locator-forbidden"), whether it came as a
// locator or in a parameter. A resolver used with a ctx of its own
// (context.Background) applies the worker's roots only.
type Handler func(ctx context.Context, item *WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error)

// Profile is a job profile this worker offers: its definition, registered
// with the registry unless an operator already defined it, and its handler.
type Profile struct {
	Spec    *registryv1.JobProfile
	Handler Handler
}

// Problem types a worker reports, beyond the generic ones.
const (
	TypeInputNotFound      = "input-not-found"
	TypeLocatorForbidden   = "locator-forbidden"
	TypeInputTooLarge      = "input-too-large"
	TypeInputUnavailable   = "input-unavailable"
	TypeInvalidInput       = "invalid-input"
	TypeUnsupportedLocator = "unsupported-locator"
	TypeToolFailed         = "tool-failed"
	TypeUnsupportedProfile = "unsupported-profile"
	TypeTimeout            = "timeout"
	TypeExecutionFailed    = "execution-failed"
	TypeOutputTooLarge     = "output-too-large"
)

// MaxOutputBytes bounds a job's output, encoded. The output travels in the
// worker's report and in the job's records and announcements, which also
// carry its input (up to 256 KiB), and NATS refuses a message over its
// max_payload (1 MiB by default): a job past it would be taken for lost and
// run again. Larger results belong in an output locator; a handler's
// output over the bound fails the job (TypeOutputTooLarge).
const MaxOutputBytes = 512 << 10

// LocatorField is the job field of input locator param, as problems name it.
func LocatorField(param string) string { return "input.locators." + param }

// InputLocator returns the URL of the input locator param, or an
// "invalid-input" problem naming the missing parameter.
func InputLocator(item *WorkItem, param string) (string, error) {
	l := item.GetInput().GetLocators()[param]
	if l.GetUrl() == "" {
		return "", &problem.Error{
			Code:   codes.InvalidArgument,
			Type:   TypeInvalidInput,
			Title:  "Missing input",
			Detail: fmt.Sprintf("input locator %q is required by profile %s", param, item.GetProfile()),
			Field:  LocatorField(param),
		}
	}
	return l.GetUrl(), nil
}

// InputError turns a pkg/locator error on input param (at url) into the
// problem the client sees. Context errors pass through: they are the run's
// fate (cancel, timeout, shutdown), not the input's.
func InputError(param, url string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	p := &problem.Error{Field: LocatorField(param), Err: err}
	where := fmt.Sprintf("input %q (%s)", param, locator.Redact(url))
	switch {
	case errors.Is(err, locator.ErrNotFound):
		p.Code, p.Type, p.Title = codes.NotFound, TypeInputNotFound, "Input not found"
	case errors.Is(err, locator.ErrForbidden):
		p.Code, p.Type, p.Title = codes.PermissionDenied, TypeLocatorForbidden, "Locator forbidden"
	case errors.Is(err, locator.ErrTooLarge):
		p.Code, p.Type, p.Title = codes.InvalidArgument, TypeInputTooLarge, "Input too large"
	case errors.Is(err, locator.ErrUnsupportedScheme):
		p.Code, p.Type, p.Title = codes.InvalidArgument, TypeUnsupportedLocator, "Unsupported locator"
	case errors.Is(err, locator.ErrInvalid):
		p.Code, p.Type, p.Title = codes.InvalidArgument, TypeInvalidInput, "Invalid input"
	default:
		p.Code, p.Type, p.Title = codes.Unavailable, TypeInputUnavailable, "Input unavailable"
	}
	p.Detail = where + ": " + err.Error()
	p.Err = nil // the detail already says it all
	return p
}

// ToolError reports a media tool that failed, with an excerpt of its stderr.
func ToolError(tool string, err error, stderr []byte) error {
	const maxExcerpt = 2000
	excerpt := string(stderr)
	if len(excerpt) > maxExcerpt {
		excerpt = "..." + excerpt[len(excerpt)-maxExcerpt:]
	}
	detail := fmt.Sprintf("%s failed: %v", tool, err)
	if excerpt != "" {
		detail += ": " + excerpt
	}
	return &problem.Error{Code: codes.Internal, Type: TypeToolFailed, Title: "Tool failed", Detail: detail}
}
