package profiles

import (
	"context"
	"fmt"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Names of the diagnostic profiles and their parameters.
const (
	Sleep        = "Sleep"
	NoOp         = "NoOp"
	ParamSeconds = "seconds"
	// maxSleep bounds a Sleep job so a typo cannot hold a slot for days.
	maxSleep = 24 * time.Hour
)

// SleepProfile is the diagnostic Sleep profile: it sleeps "seconds" (default
// 1), reporting progress, and stops at once on cancel. Its verified quantity
// is the seconds slept. It exists to exercise the platform (chaos tests,
// benchmarks) without media.
func SleepProfile() workersdk.Profile {
	return workersdk.Profile{
		Spec: &registryv1.JobProfile{
			Name:                    Sleep,
			JobType:                 "QAJob",
			Description:             "Diagnostic: sleeps for the given number of seconds (default 1), honouring cancel.",
			OptionalInputParameters: []*registryv1.ParameterSpec{{Name: ParamSeconds, Type: "number"}},
			DefaultTimeout:          durationpb.New(time.Hour),
			MaxAttempts:             3,
		},
		Handler: func(ctx context.Context, item *workersdk.WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error) {
			secs := 1.0
			v, given := item.GetInput().GetParameters().GetFields()[ParamSeconds]
			if given {
				secs = v.GetNumberValue()
			}
			_, isNumber := v.GetKind().(*structpb.Value_NumberValue)
			d := time.Duration(secs * float64(time.Second))
			if (given && !isNumber) || secs < 0 || d > maxSleep {
				return nil, 0, &problem.Error{Code: codes.InvalidArgument, Type: workersdk.TypeInvalidInput, Title: "Invalid input",
					Detail: fmt.Sprintf("seconds must be a number between 0 and %v", maxSleep.Seconds()), Field: "input.parameters." + ParamSeconds}
			}
			start := time.Now()
			tick := time.NewTicker(max(d/100, 10*time.Millisecond))
			defer tick.Stop()
			end := time.NewTimer(d)
			defer end.Stop()
			for {
				select {
				case <-ctx.Done():
					return nil, 0, context.Cause(ctx)
				case <-end.C:
					return &jobsv1.JobOutput{}, secs, nil
				case <-tick.C:
					progress(int(100 * time.Since(start) / max(d, 1)))
				}
			}
		},
	}
}

// NoOpProfile is the diagnostic NoOp profile: it completes at once with an
// empty output, to measure the platform's own overhead.
func NoOpProfile() workersdk.Profile {
	return workersdk.Profile{
		Spec: &registryv1.JobProfile{
			Name:           NoOp,
			JobType:        "QAJob",
			Description:    "Diagnostic: completes immediately with an empty output.",
			DefaultTimeout: durationpb.New(time.Minute),
			MaxAttempts:    3,
		},
		Handler: func(context.Context, *workersdk.WorkItem, func(int)) (*jobsv1.JobOutput, float64, error) {
			return &jobsv1.JobOutput{}, 0, nil
		},
	}
}
