package app_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/services/job-processor/internal/app"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// registryStandIn stands in for the service-registry (another service; the
// end-to-end test runs the real binary): a real gRPC server answering the two
// lookups the processor makes from a fixed list, so this test covers the
// processor's real gRPC client path.
type registryStandIn struct {
	registryv1.UnimplementedRegistryServiceServer
}

func (registryStandIn) ListInstances(_ context.Context, req *registryv1.ListInstancesRequest) (*registryv1.ListInstancesResponse, error) {
	if req.Profile != "P" {
		return &registryv1.ListInstancesResponse{}, nil
	}
	return &registryv1.ListInstancesResponse{Instances: []*registryv1.ServiceInstance{
		{Id: "probe-1", Service: "probe", Capacity: 2, Profiles: []string{"P"}},
	}}, nil
}

func (registryStandIn) GetService(_ context.Context, req *registryv1.GetServiceRequest) (*registryv1.Service, error) {
	if req.Name != "probe" {
		return nil, status.Error(codes.NotFound, "no such service")
	}
	return &registryv1.Service{Name: "probe", CostPerUnit: 1}, nil
}

func startRegistryStandIn(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := grpcx.NewServer()
	registryv1.RegisterRegistryServiceServer(s, registryStandIn{})
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRun(t *testing.T) {
	env := devenv.Start(t)
	adminAddr, err := devenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	cfg := app.Defaults()
	cfg.NATSURL = env.NATS.URL
	cfg.EtcdEndpoints = env.Etcd.Endpoints
	cfg.RegistryAddr = startRegistryStandIn(t)
	cfg.AdminAddr = adminAddr
	cfg.LogLevel = "warn"

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx, cfg) }()

	base := "http://" + adminAddr
	waitFor(t, "/readyz 200", func() bool { code, _ := get(base + "/readyz"); return code == http.StatusOK })

	nc, js, err := bus.Connect(env.NATS.URL, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	job := &jobsv1.Job{Id: "job-app", Tenant: "t1", Profile: "P", CreateTime: timestamppb.Now()}
	if err := bus.Publish(ctx, js, bus.SubjectJobCreated, "created-job-app", &eventsv1.JobCreated{Job: job}); err != nil {
		t.Fatal(err)
	}
	work, err := js.Stream(ctx, bus.StreamWork)
	if err != nil {
		t.Fatal(err)
	}
	var item eventsv1.WorkItem
	waitFor(t, "the work item", func() bool {
		m, err := work.GetLastMsgForSubject(ctx, bus.SubjectWork("probe", "job-app"))
		return err == nil && proto.Unmarshal(m.Data, &item) == nil
	})
	if item.JobId != "job-app" || item.Attempt != 1 {
		t.Errorf("work item = %v", &item)
	}
	events, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "SCHEDULED", func() bool {
		m, err := events.GetLastMsgForSubject(ctx, bus.SubjectJobStatus("job-app"))
		var ev eventsv1.JobStatusChanged
		return err == nil && proto.Unmarshal(m.Data, &ev) == nil && ev.Status == jobsv1.JobStatus_JOB_STATUS_SCHEDULED
	})
	if _, body := get(base + "/metrics"); !strings.Contains(body, `medius_processor_jobs_dispatched`) || !strings.Contains(body, `profile="P"`) {
		t.Errorf("/metrics lacks the dispatched counter:\n%s", body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// The durable consumers outlive the process: a replica picks up from them.
	if _, err := js.Consumer(context.Background(), bus.StreamEvents, "processor-created"); err != nil {
		t.Errorf("durable consumer gone: %v", err)
	}
}

// Without a registry or etcd to answer, the processor runs but is not ready.
func TestNotReadyWithoutDependencies(t *testing.T) {
	n, err := devenv.StartNATS(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	adminAddr, _ := devenv.FreeAddr()
	nowhere, _ := devenv.FreeAddr()
	cfg := app.Defaults()
	cfg.NATSURL = n.URL
	cfg.EtcdEndpoints = []string{"http://" + nowhere}
	cfg.RegistryAddr = nowhere
	cfg.AdminAddr = adminAddr
	cfg.LogLevel = "error"

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx, cfg) }()

	base := "http://" + adminAddr
	var body string
	waitFor(t, "/readyz to name the missing dependencies", func() bool {
		var code int
		code, body = get(base + "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, `"registry"`) && strings.Contains(body, `"etcd"`)
	})
	if strings.Contains(body, `"nats"`) {
		t.Errorf("/readyz blames NATS: %s", body)
	}
	if code, _ := get(base + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
