package workersdk_test

import (
	"context"
	"testing"
	"time"

	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/devstack"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestServe runs a worker written with the SDK against the real platform:
// it registers its own profile and service, takes a job submitted through
// the mediator, reports its result, and stops cleanly.
func TestServe(t *testing.T) {
	const key = "mk_sdk_test_key"
	stack := devstack.StartForTest(t, devstack.Config{APIKey: key})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	greet := workersdk.Profile{
		Spec: &registryv1.JobProfile{Name: "Greet", JobType: "QAJob",
			OptionalInputParameters: []*registryv1.ParameterSpec{{Name: "name", Type: "string"}}},
		Handler: func(ctx context.Context, job *workersdk.WorkItem, progress func(int)) (*jobsv1.JobOutput, float64, error) {
			progress(50)
			out, _ := structpb.NewStruct(map[string]any{"greeting": "hello " + job.GetInput().GetParameters().GetFields()["name"].GetStringValue()})
			return &jobsv1.JobOutput{Data: out}, 2, nil
		},
	}
	wctx, stopWorker := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- workersdk.Serve(wctx, workersdk.Options{
			NATSURL: stack.NATS.URL, RegistryAddr: stack.RegistryAddr,
			Instance: workersdk.Instance{Service: "greeter", InstanceID: "greeter-1", Capacity: 1},
			Profiles: []workersdk.Profile{greet}, DrainTimeout: 5 * time.Second,
		})
	}()
	t.Cleanup(stopWorker)

	cc, err := grpcx.Dial(stack.GRPCAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	jobs := jobsv1.NewJobServiceClient(cc)
	actx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	params, _ := structpb.NewStruct(map[string]any{"name": "world"})
	var job *jobsv1.Job
	// The profile exists once the worker has registered it.
	for {
		job, err = jobs.CreateJob(actx, &jobsv1.CreateJobRequest{Job: &jobsv1.Job{Profile: "Greet", Input: &jobsv1.JobInput{Parameters: params}}})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("create job: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for job.GetStatus() != jobsv1.JobStatus_JOB_STATUS_COMPLETED {
		if s := job.GetStatus(); s == jobsv1.JobStatus_JOB_STATUS_FAILED || s == jobsv1.JobStatus_JOB_STATUS_CANCELED {
			t.Fatalf("job ended %v: %v", s, job.GetError())
		}
		if ctx.Err() != nil {
			t.Fatalf("job not completed: %v", job)
		}
		time.Sleep(50 * time.Millisecond)
		if job, err = jobs.GetJob(actx, &jobsv1.GetJobRequest{Id: job.GetId()}); err != nil {
			t.Fatal(err)
		}
	}
	if g := job.GetOutput().GetData().GetFields()["greeting"].GetStringValue(); g != "hello world" || job.GetVerifiedQuantity() != 2 {
		t.Errorf("output %v quantity %v, want hello world and 2", job.GetOutput(), job.GetVerifiedQuantity())
	}

	stopWorker()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}
