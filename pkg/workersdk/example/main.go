// Command example is a complete Medius worker offering one profile,
// "Greet", written with the worker SDK. With the platform running
// (`make run`), start it with
//
//	go run ./pkg/workersdk/example --nats-url nats://127.0.0.1:4222 --registry-addr 127.0.0.1:9091
//
// and submit a job of profile Greet with parameter "name" (see
// docs/worker-sdk.md).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/protobuf/types/known/structpb"
)

// greet is the profile: a description for the registry and a handler.
var greet = workersdk.Profile{
	Spec: &registryv1.JobProfile{
		Name: "Greet", JobType: "QAJob", Description: "Says hello, slowly.",
		OptionalInputParameters: []*registryv1.ParameterSpec{{Name: "name", Type: "string"}},
		OutputParameters:        []*registryv1.ParameterSpec{{Name: "greeting", Type: "string"}},
	},
	Handler: func(ctx context.Context, job *workersdk.WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error) {
		name := job.GetInput().GetParameters().GetFields()["name"].GetStringValue()
		for p := 0; p < 100; p += 25 {
			progress(p)
			select {
			case <-ctx.Done(): // canceled, timed out or shutting down
				return nil, 0, context.Cause(ctx)
			case <-time.After(250 * time.Millisecond):
			}
		}
		out, _ := structpb.NewStruct(map[string]any{"greeting": "hello " + name})
		return &jobsv1.JobOutput{Data: out}, 1, nil // 1 = the billable quantity
	},
}

func main() {
	natsURL := flag.String("nats-url", "nats://127.0.0.1:4222", "NATS URL")
	registry := flag.String("registry-addr", "127.0.0.1:9091", "service registry gRPC address")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := workersdk.Serve(ctx, workersdk.Options{
		NATSURL: *natsURL, RegistryAddr: *registry,
		Instance: workersdk.Instance{Service: "greeter", InstanceID: fmt.Sprintf("greeter-%d", os.Getpid()), Capacity: 2},
		Profiles: []workersdk.Profile{greet},
	})
	if err != nil {
		slog.Error("worker stopped", "err", err)
		os.Exit(1)
	}
}
