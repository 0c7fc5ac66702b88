package registry

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/bus"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/grpcx"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// fixture is a registry served over real gRPC on real etcd and NATS.
type fixture struct {
	cli    *clientv3.Client
	js     jetstream.JetStream
	nc     *nats.Conn
	client registryv1.RegistryServiceClient
}

func setup(t testing.TB) *fixture {
	t.Helper()
	env := devenv.Start(t)
	return setupOn(t, env)
}

func setupOn(t testing.TB, env *devenv.Env) *fixture {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: env.Etcd.Endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	nc, js, err := bus.Connect(env.NATS.URL, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := bus.Provision(t.Context(), js); err != nil {
		t.Fatal(err)
	}

	srv, _ := grpcx.NewServer()
	registryv1.RegisterRegistryServiceServer(srv, NewServer(cli, 10*time.Second))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := NewWatcher(cli, js)
	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error { return srv.Serve(lis) })
	g.Go(func() error {
		w.retryWait = 50 * time.Millisecond // recover quickly from restarts
		return w.Run(ctx)
	})
	t.Cleanup(func() {
		srv.Stop()
		cancel()
		if err := g.Wait(); err != nil {
			t.Errorf("registry: %v", err)
		}
	})
	select {
	case <-w.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("watcher not ready")
	}
	conn, err := grpcx.Dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &fixture{cli: cli, js: js, nc: nc, client: registryv1.NewRegistryServiceClient(conn)}
}

// events subscribes to the instance events of service.
func (f *fixture) events(t *testing.T, service string) <-chan *eventsv1.ServiceInstanceChanged {
	t.Helper()
	raw := make(chan *nats.Msg, 256)
	sub, err := f.nc.ChanSubscribe(bus.SubjectInstance(service), raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	out := make(chan *eventsv1.ServiceInstanceChanged, 256)
	go func() {
		for m := range raw {
			var ev eventsv1.ServiceInstanceChanged
			if err := bus.Decode(m.Data, &ev); err != nil {
				t.Errorf("decode event: %v", err)
				continue
			}
			out <- &ev
		}
	}()
	t.Cleanup(func() { close(raw) })
	return out
}

// waitEvent waits for an event of kind about instance id, skipping others.
func waitEvent(t *testing.T, ch <-chan *eventsv1.ServiceInstanceChanged, kind eventsv1.ServiceInstanceChanged_Kind, id string, within time.Duration) *eventsv1.ServiceInstanceChanged {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case ev := <-ch:
			if ev.GetKind() == kind && ev.GetInstance().GetId() == id {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s event for instance %s within %s", kind, id, within)
		}
	}
}

// eventually polls cond until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func register(t *testing.T, f *fixture, service, id string, profiles []string, ttl time.Duration) *registryv1.RegisterInstanceResponse {
	t.Helper()
	req := &registryv1.RegisterInstanceRequest{
		Service:  &registryv1.Service{Name: service, JobTypes: []string{"AIJob"}, Profiles: profiles},
		Instance: &registryv1.ServiceInstance{Id: id, Capacity: 2, Address: "10.0.0.1:1234"},
	}
	if ttl > 0 {
		req.Ttl = durationpb.New(ttl)
	}
	resp, err := f.client.RegisterInstance(t.Context(), req)
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	return resp
}

func instanceIDs(t *testing.T, f *fixture, req *registryv1.ListInstancesRequest) []string {
	t.Helper()
	resp, err := f.client.ListInstances(t.Context(), req)
	if err != nil {
		t.Fatalf("list instances: %v", err)
	}
	var ids []string
	for _, i := range resp.GetInstances() {
		ids = append(ids, i.GetId())
	}
	return ids
}

// wantCode checks err's gRPC code and, for InvalidArgument, the field named.
func wantCode(t *testing.T, err error, code codes.Code, field string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code {
		t.Fatalf("code = %s (%v), want %s", st.Code(), err, code)
	}
	if field != "" {
		if got := problem.FromStatus(st).GetField(); got != field {
			t.Fatalf("field = %q (%s), want %q", got, st.Message(), field)
		}
	}
}

func TestRegisterListKeepAliveDeregister(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()
	ev := f.events(t, "transcoder")

	resp := register(t, f, "transcoder", "tc-1", []string{"ffmpeg-proxy"}, 0)
	if got := resp.GetTtl().AsDuration(); got != 10*time.Second {
		t.Errorf("ttl = %s, want the registry default 10s", got)
	}
	inst := resp.GetInstance()
	if inst.GetService() != "transcoder" || inst.GetStartTime() == nil || inst.GetLastHeartbeatTime() == nil {
		t.Errorf("registered instance = %v, want service, start and heartbeat times set", inst)
	}
	if !slices.Equal(inst.GetProfiles(), []string{"ffmpeg-proxy"}) {
		t.Errorf("instance profiles = %v, want the service's", inst.GetProfiles())
	}
	waitEvent(t, ev, eventsv1.ServiceInstanceChanged_KIND_UP, "tc-1", 5*time.Second)

	register(t, f, "transcoder", "tc-2", []string{"ffmpeg-thumbnail"}, 0)
	register(t, f, "ocr", "ocr-1", []string{"tesseract"}, 0)

	// Registration merged both instances' profiles into the service.
	svc, err := f.client.GetService(ctx, &registryv1.GetServiceRequest{Name: "transcoder"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(svc.GetProfiles(), []string{"ffmpeg-proxy", "ffmpeg-thumbnail"}) || !slices.Equal(svc.GetJobTypes(), []string{"AIJob"}) {
		t.Errorf("service = %v, want merged profiles and job types", svc)
	}

	for _, tc := range []struct {
		req  *registryv1.ListInstancesRequest
		want []string
	}{
		{&registryv1.ListInstancesRequest{}, []string{"ocr-1", "tc-1", "tc-2"}},
		{&registryv1.ListInstancesRequest{Service: "transcoder"}, []string{"tc-1", "tc-2"}},
		{&registryv1.ListInstancesRequest{Profile: "tesseract"}, []string{"ocr-1"}},
		{&registryv1.ListInstancesRequest{Service: "transcoder", Profile: "ffmpeg-thumbnail"}, []string{"tc-2"}},
		{&registryv1.ListInstancesRequest{Service: "transcoder", Profile: "tesseract"}, nil},
	} {
		if got := instanceIDs(t, f, tc.req); !slices.Equal(got, tc.want) {
			t.Errorf("ListInstances(%v) = %v, want %v", tc.req, got, tc.want)
		}
	}

	ka, err := f.client.KeepAliveInstance(ctx, &registryv1.KeepAliveInstanceRequest{InstanceId: "tc-1", InFlight: 1})
	if err != nil {
		t.Fatalf("keep alive: %v", err)
	}
	if ka.GetTtl().AsDuration() != 10*time.Second {
		t.Errorf("keep alive ttl = %s, want 10s", ka.GetTtl().AsDuration())
	}

	if _, err := f.client.DeregisterInstance(ctx, &registryv1.DeregisterInstanceRequest{InstanceId: "tc-1"}); err != nil {
		t.Fatalf("deregister: %v", err)
	}
	if got := instanceIDs(t, f, &registryv1.ListInstancesRequest{Service: "transcoder"}); !slices.Equal(got, []string{"tc-2"}) {
		t.Errorf("after deregister: %v, want [tc-2]", got)
	}
	_, err = f.client.KeepAliveInstance(ctx, &registryv1.KeepAliveInstanceRequest{InstanceId: "tc-1"})
	wantCode(t, err, codes.NotFound, "")
	// Deregistering twice is fine: the instance is gone either way.
	if _, err := f.client.DeregisterInstance(ctx, &registryv1.DeregisterInstanceRequest{InstanceId: "tc-1"}); err != nil {
		t.Errorf("second deregister: %v", err)
	}
}

func TestKeepAliveRecordsLoadAtABoundedRate(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()
	register(t, f, "worker", "w-1", []string{"p"}, 0)
	modRev := func() int64 {
		resp, err := f.cli.Get(ctx, InstanceKey("w-1"))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get instance: %v %v", resp, err)
		}
		return resp.Kvs[0].ModRevision
	}
	stored := func() *registryv1.ServiceInstance {
		resp, err := f.cli.Get(ctx, InstanceKey("w-1"))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get instance: %v %v", resp, err)
		}
		var i registryv1.ServiceInstance
		if err := decode(resp.Kvs[0].Value, &i); err != nil {
			t.Fatal(err)
		}
		return &i
	}
	keepAlive := func(inFlight int32) {
		t.Helper()
		if _, err := f.client.KeepAliveInstance(ctx, &registryv1.KeepAliveInstanceRequest{InstanceId: "w-1", InFlight: inFlight}); err != nil {
			t.Fatalf("keep alive: %v", err)
		}
	}

	// Right after registering, a change of load is not written yet.
	before := modRev()
	keepAlive(1)
	if modRev() != before {
		t.Errorf("keep-alive within 1s of the last write wrote to etcd")
	}
	// Once a second has passed it is.
	eventually(t, 5*time.Second, "in_flight recorded", func() bool {
		keepAlive(2)
		return stored().GetInFlight() == 2
	})
	first := stored()
	// A burst of keep-alives writes at most once more.
	before = modRev()
	for n := range int32(10) {
		keepAlive(3 + n)
	}
	if d := modRev() - before; d > 1 {
		t.Errorf("10 keep-alives wrote %d times, want at most 1", d)
	}
	if !stored().GetLastHeartbeatTime().AsTime().After(first.GetStartTime().AsTime()) {
		t.Errorf("last_heartbeat_time not advanced")
	}
	// The lease is still the registration's: the instance is alive.
	if got := instanceIDs(t, f, &registryv1.ListInstancesRequest{}); !slices.Equal(got, []string{"w-1"}) {
		t.Errorf("instances = %v", got)
	}
}

func TestLeaseExpiryRemovesInstanceAndPublishesDown(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ev := f.events(t, "flaky")
	const ttl = 2 * time.Second
	resp := register(t, f, "flaky", "flaky-1", []string{"p"}, ttl)
	registered := time.Now()
	if got := resp.GetTtl().AsDuration(); got != ttl {
		t.Fatalf("granted ttl = %s, want %s", got, ttl)
	}
	waitEvent(t, ev, eventsv1.ServiceInstanceChanged_KIND_UP, "flaky-1", 5*time.Second)

	// No keep-alives: the instance must be gone within ttl + 1s.
	eventually(t, ttl+time.Second, "instance expired", func() bool {
		return len(instanceIDs(t, f, &registryv1.ListInstancesRequest{Service: "flaky"})) == 0
	})
	t.Logf("instance gone %s after registration", time.Since(registered).Round(10*time.Millisecond))
	// The DOWN event too is out within ttl + 1s of the last sign of life.
	down := waitEvent(t, ev, eventsv1.ServiceInstanceChanged_KIND_DOWN, "flaky-1", time.Until(registered.Add(ttl+time.Second)))
	t.Logf("DOWN event %s after registration", time.Since(registered).Round(10*time.Millisecond))
	if down.GetInstance().GetService() != "flaky" || down.GetInstance().GetAddress() != "10.0.0.1:1234" {
		t.Errorf("DOWN event carries %v, want the last stored instance", down.GetInstance())
	}
	_, err := f.client.KeepAliveInstance(t.Context(), &registryv1.KeepAliveInstanceRequest{InstanceId: "flaky-1"})
	wantCode(t, err, codes.NotFound, "")
}

func TestDeregisterRemovesAtOnce(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ev := f.events(t, "svc")
	register(t, f, "svc", "svc-1", nil, 0)
	waitEvent(t, ev, eventsv1.ServiceInstanceChanged_KIND_UP, "svc-1", 5*time.Second)
	if _, err := f.client.DeregisterInstance(t.Context(), &registryv1.DeregisterInstanceRequest{InstanceId: "svc-1"}); err != nil {
		t.Fatal(err)
	}
	// No polling: the lease is revoked before Deregister returns.
	if got := instanceIDs(t, f, &registryv1.ListInstancesRequest{}); len(got) != 0 {
		t.Fatalf("instances right after deregister = %v, want none", got)
	}
	waitEvent(t, ev, eventsv1.ServiceInstanceChanged_KIND_DOWN, "svc-1", 5*time.Second)
}

func TestReRegisterKeepsOneLiveRecord(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ev := f.events(t, "svc")
	ctx := t.Context()
	register(t, f, "svc", "svc-1", nil, 2*time.Second)
	first, err := f.cli.Get(ctx, InstanceKey("svc-1"))
	if err != nil {
		t.Fatal(err)
	}
	oldLease := clientv3.LeaseID(first.Kvs[0].Lease)
	// The restarted instance registers again with a longer ttl: the first
	// lease must no longer be able to remove it.
	register(t, f, "svc", "svc-1", nil, 30*time.Second)
	waitEvent(t, ev, eventsv1.ServiceInstanceChanged_KIND_UPDATED, "svc-1", 5*time.Second)
	eventually(t, 5*time.Second, "first lease gone", func() bool {
		ttl, err := f.cli.TimeToLive(ctx, oldLease)
		return err == nil && ttl.TTL == -1
	})
	if got := instanceIDs(t, f, &registryv1.ListInstancesRequest{}); !slices.Equal(got, []string{"svc-1"}) {
		t.Fatalf("instances = %v, want the re-registered svc-1", got)
	}
}

func TestValidationNamesTheField(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()
	okService := &registryv1.Service{Name: "svc", Profiles: []string{"p"}}
	okInstance := &registryv1.ServiceInstance{Id: "i-1", Capacity: 1}
	param := func(name, typ string) *registryv1.ParameterSpec {
		return &registryv1.ParameterSpec{Name: name, Type: typ}
	}

	registers := []struct {
		name  string
		req   *registryv1.RegisterInstanceRequest
		field string
	}{
		{"no service", &registryv1.RegisterInstanceRequest{Instance: okInstance}, "service"},
		{"bad service name", &registryv1.RegisterInstanceRequest{Service: &registryv1.Service{Name: "a/b"}, Instance: okInstance}, "service.name"},
		{"bad profile name", &registryv1.RegisterInstanceRequest{Service: &registryv1.Service{Name: "svc", Profiles: []string{"ok", "not ok"}}, Instance: okInstance}, "service.profiles[1]"},
		{"unknown job type", &registryv1.RegisterInstanceRequest{Service: &registryv1.Service{Name: "svc", JobTypes: []string{"AIJob", "FooJob"}}, Instance: okInstance}, "service.job_types[1]"},
		{"no instance", &registryv1.RegisterInstanceRequest{Service: okService}, "instance"},
		{"no instance id", &registryv1.RegisterInstanceRequest{Service: okService, Instance: &registryv1.ServiceInstance{Capacity: 1}}, "instance.id"},
		{"zero capacity", &registryv1.RegisterInstanceRequest{Service: okService, Instance: &registryv1.ServiceInstance{Id: "i-1"}}, "instance.capacity"},
		{"other service", &registryv1.RegisterInstanceRequest{Service: okService, Instance: &registryv1.ServiceInstance{Id: "i-1", Capacity: 1, Service: "other"}}, "instance.service"},
		{"negative ttl", &registryv1.RegisterInstanceRequest{Service: okService, Instance: okInstance, Ttl: durationpb.New(-time.Second)}, "ttl"},
	}
	for _, tc := range registers {
		t.Run("register/"+tc.name, func(t *testing.T) {
			_, err := f.client.RegisterInstance(ctx, tc.req)
			wantCode(t, err, codes.InvalidArgument, tc.field)
		})
	}
	// Nothing was half-written by the refused registrations.
	if resp, err := f.cli.Get(ctx, KeyPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Errorf("refused registrations wrote %d keys (%v)", resp.Count, err)
	}

	profiles := []struct {
		name    string
		profile *registryv1.JobProfile
		field   string
	}{
		{"missing", nil, "profile"},
		{"no name", &registryv1.JobProfile{JobType: "AIJob"}, "profile.name"},
		{"bad name", &registryv1.JobProfile{Name: "a b", JobType: "AIJob"}, "profile.name"},
		{"no job type", &registryv1.JobProfile{Name: "p"}, "profile.job_type"},
		{"unknown job type", &registryv1.JobProfile{Name: "p", JobType: "FooJob"}, "profile.job_type"},
		{"bad type", &registryv1.JobProfile{Name: "p", JobType: "AIJob",
			InputParameters: []*registryv1.ParameterSpec{param("inputFile", "locator"), param("lang", "text")}}, "profile.input_parameters[1].type"},
		{"no param name", &registryv1.JobProfile{Name: "p", JobType: "AIJob",
			OptionalInputParameters: []*registryv1.ParameterSpec{param("", "string")}}, "profile.optional_input_parameters[0].name"},
		{"duplicate across lists", &registryv1.JobProfile{Name: "p", JobType: "AIJob",
			InputParameters:  []*registryv1.ParameterSpec{param("inputFile", "locator")},
			OutputParameters: []*registryv1.ParameterSpec{param("outputFile", "locator"), param("inputFile", "locator")}}, "profile.output_parameters[1].name"},
		{"negative timeout", &registryv1.JobProfile{Name: "p", JobType: "AIJob", DefaultTimeout: durationpb.New(-time.Second)}, "profile.default_timeout"},
		{"negative attempts", &registryv1.JobProfile{Name: "p", JobType: "AIJob", MaxAttempts: -1}, "profile.max_attempts"},
	}
	for _, tc := range profiles {
		t.Run("profile/"+tc.name, func(t *testing.T) {
			_, err := f.client.PutJobProfile(ctx, &registryv1.PutJobProfileRequest{Profile: tc.profile})
			wantCode(t, err, codes.InvalidArgument, tc.field)
		})
	}

	_, err := f.client.ListInstances(ctx, &registryv1.ListInstancesRequest{PageToken: "!!"})
	wantCode(t, err, codes.InvalidArgument, "page_token")
	_, err = f.client.ListJobProfiles(ctx, &registryv1.ListJobProfilesRequest{PageSize: -1})
	wantCode(t, err, codes.InvalidArgument, "page_size")
	_, err = f.client.KeepAliveInstance(ctx, &registryv1.KeepAliveInstanceRequest{})
	wantCode(t, err, codes.InvalidArgument, "instance_id")
}

func TestJobProfiles(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()

	_, err := f.client.GetJobProfile(ctx, &registryv1.GetJobProfileRequest{Name: "ExtractText"})
	wantCode(t, err, codes.NotFound, "")

	operator := &registryv1.JobProfile{Name: "ExtractText", JobType: "AIJob", Description: "operator's edit", MaxAttempts: 5,
		InputParameters: []*registryv1.ParameterSpec{{Name: "inputFile", Type: "locator"}}}
	created, err := f.client.PutJobProfile(ctx, &registryv1.PutJobProfileRequest{Profile: operator})
	if err != nil {
		t.Fatal(err)
	}
	if created.GetCreateTime() == nil || created.GetUpdateTime() == nil {
		t.Errorf("created profile has no times: %v", created)
	}

	// A worker announcing its built-in profile does not clobber the edit.
	builtin := &registryv1.JobProfile{Name: "ExtractText", JobType: "AIJob", Description: "built-in", MaxAttempts: 3}
	got, err := f.client.PutJobProfile(ctx, &registryv1.PutJobProfileRequest{Profile: builtin, OnlyIfAbsent: true})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetDescription() != "operator's edit" || got.GetMaxAttempts() != 5 {
		t.Errorf("only_if_absent returned %v, want the existing profile", got)
	}
	stored, err := f.client.GetJobProfile(ctx, &registryv1.GetJobProfileRequest{Name: "ExtractText"})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(stored, created) {
		t.Errorf("stored profile = %v, want untouched %v", stored, created)
	}

	// only_if_absent creates an absent profile.
	got, err = f.client.PutJobProfile(ctx, &registryv1.PutJobProfileRequest{
		Profile: &registryv1.JobProfile{Name: "Transcode", JobType: "TransformJob"}, OnlyIfAbsent: true})
	if err != nil || got.GetCreateTime() == nil {
		t.Fatalf("only_if_absent on an absent profile: %v, %v", got, err)
	}

	// A plain put replaces, keeping create_time.
	time.Sleep(5 * time.Millisecond) // distinct update_time
	replaced, err := f.client.PutJobProfile(ctx, &registryv1.PutJobProfileRequest{Profile: builtin})
	if err != nil {
		t.Fatal(err)
	}
	if replaced.GetDescription() != "built-in" || !proto.Equal(replaced.GetCreateTime(), created.GetCreateTime()) ||
		!replaced.GetUpdateTime().AsTime().After(created.GetUpdateTime().AsTime()) {
		t.Errorf("replaced = %v, want new content, same create_time, later update_time", replaced)
	}

	list, err := f.client.ListJobProfiles(ctx, &registryv1.ListJobProfilesRequest{JobType: "TransformJob"})
	if err != nil || len(list.GetProfiles()) != 1 || list.GetProfiles()[0].GetName() != "Transcode" {
		t.Errorf("ListJobProfiles(TransformJob) = %v, %v", list, err)
	}

	if _, err := f.client.DeleteJobProfile(ctx, &registryv1.DeleteJobProfileRequest{Name: "Transcode"}); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.DeleteJobProfile(ctx, &registryv1.DeleteJobProfileRequest{Name: "Transcode"})
	wantCode(t, err, codes.NotFound, "")
	_, err = f.client.GetJobProfile(ctx, &registryv1.GetJobProfileRequest{Name: "Transcode"})
	wantCode(t, err, codes.NotFound, "")
}

func TestServices(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()

	put := func(s *registryv1.Service) *registryv1.Service {
		t.Helper()
		out, err := f.client.PutService(ctx, &registryv1.PutServiceRequest{Service: s})
		if err != nil {
			t.Fatalf("put service %s: %v", s.GetName(), err)
		}
		return out
	}
	ffmpeg := put(&registryv1.Service{Name: "ffmpeg", JobTypes: []string{"TransformJob"}, Profiles: []string{"proxy"}, Regions: []string{"eu"}, CostPerUnit: 0.5})
	put(&registryv1.Service{Name: "ocr", JobTypes: []string{"AIJob"}, Profiles: []string{"text"}, Regions: []string{"us", "eu"}})
	put(&registryv1.Service{Name: "stt", JobTypes: []string{"AIJob"}, Profiles: []string{"speech"}})

	list := func(req *registryv1.ListServicesRequest) []string {
		t.Helper()
		resp, err := f.client.ListServices(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range resp.GetServices() {
			names = append(names, s.GetName())
		}
		return names
	}
	for _, tc := range []struct {
		req  *registryv1.ListServicesRequest
		want []string
	}{
		{&registryv1.ListServicesRequest{}, []string{"ffmpeg", "ocr", "stt"}},
		{&registryv1.ListServicesRequest{JobType: "AIJob"}, []string{"ocr", "stt"}},
		{&registryv1.ListServicesRequest{Profile: "proxy"}, []string{"ffmpeg"}},
		{&registryv1.ListServicesRequest{Region: "eu"}, []string{"ffmpeg", "ocr"}},
		{&registryv1.ListServicesRequest{Region: "us", JobType: "AIJob"}, []string{"ocr"}},
		{&registryv1.ListServicesRequest{Region: "asia"}, nil},
	} {
		if got := list(tc.req); !slices.Equal(got, tc.want) {
			t.Errorf("ListServices(%v) = %v, want %v", tc.req, got, tc.want)
		}
	}

	// A registering instance merges into the operator's definition.
	register(t, f, "ffmpeg", "ff-1", []string{"thumbnail"}, 0)
	got, err := f.client.GetService(ctx, &registryv1.GetServiceRequest{Name: "ffmpeg"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.GetProfiles(), []string{"proxy", "thumbnail"}) || !slices.Equal(got.GetJobTypes(), []string{"TransformJob", "AIJob"}) ||
		got.GetCostPerUnit() != 0.5 || !slices.Equal(got.GetRegions(), []string{"eu"}) || !proto.Equal(got.GetCreateTime(), ffmpeg.GetCreateTime()) {
		t.Errorf("merged service = %v", got)
	}
	// Re-registering the same definition writes nothing.
	before, _ := f.cli.Get(ctx, ServiceKey("ffmpeg"))
	register(t, f, "ffmpeg", "ff-1", []string{"thumbnail"}, 0)
	after, _ := f.cli.Get(ctx, ServiceKey("ffmpeg"))
	if before.Kvs[0].ModRevision != after.Kvs[0].ModRevision {
		t.Errorf("unchanged service definition was rewritten")
	}

	if _, err := f.client.DeleteService(ctx, &registryv1.DeleteServiceRequest{Name: "stt"}); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.GetService(ctx, &registryv1.GetServiceRequest{Name: "stt"})
	wantCode(t, err, codes.NotFound, "")
	_, err = f.client.DeleteService(ctx, &registryv1.DeleteServiceRequest{Name: "stt"})
	wantCode(t, err, codes.NotFound, "")
	_, err = f.client.PutService(ctx, &registryv1.PutServiceRequest{Service: &registryv1.Service{Name: "x", CostPerUnit: -1}})
	wantCode(t, err, codes.InvalidArgument, "service.cost_per_unit")
}

func TestPaginationReturnsEveryItemOnce(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()

	const nProfiles = 25
	for i := range nProfiles {
		jt := "AIJob"
		if i%3 == 0 {
			jt = "QAJob"
		}
		if _, err := f.client.PutJobProfile(ctx, &registryv1.PutJobProfileRequest{
			Profile: &registryv1.JobProfile{Name: fmt.Sprintf("profile-%02d", i), JobType: jt}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 12 {
		svc := "even"
		if i%2 == 1 {
			svc = "odd"
		}
		register(t, f, svc, fmt.Sprintf("inst-%02d", i), nil, 0)
	}

	profiles := func(jobType string, size int32) []string {
		t.Helper()
		var names []string
		token := ""
		for pages := 0; ; pages++ {
			if pages > nProfiles {
				t.Fatal("pagination does not end")
			}
			resp, err := f.client.ListJobProfiles(ctx, &registryv1.ListJobProfilesRequest{JobType: jobType, PageSize: size, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.GetProfiles()) > int(size) {
				t.Fatalf("page of %d items, page_size %d", len(resp.GetProfiles()), size)
			}
			if resp.GetNextPageToken() != "" && len(resp.GetProfiles()) == 0 {
				t.Fatal("empty page with a next page token")
			}
			for _, p := range resp.GetProfiles() {
				names = append(names, p.GetName())
			}
			if token = resp.GetNextPageToken(); token == "" {
				return names
			}
		}
	}
	checkOnce := func(what string, got []string, want func(i int) bool, n int, name func(int) string) {
		t.Helper()
		var exp []string
		for i := range n {
			if want(i) {
				exp = append(exp, name(i))
			}
		}
		if !slices.Equal(got, exp) {
			t.Errorf("%s = %v, want each of %v exactly once", what, got, exp)
		}
	}
	profileName := func(i int) string { return fmt.Sprintf("profile-%02d", i) }
	for _, size := range []int32{1, 7, 25, 100} {
		checkOnce(fmt.Sprintf("all profiles, page size %d", size), profiles("", size), func(int) bool { return true }, nProfiles, profileName)
		checkOnce(fmt.Sprintf("QAJob profiles, page size %d", size), profiles("QAJob", size), func(i int) bool { return i%3 == 0 }, nProfiles, profileName)
	}

	var odd []string
	token := ""
	for {
		resp, err := f.client.ListInstances(ctx, &registryv1.ListInstancesRequest{Service: "odd", PageSize: 4, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range resp.GetInstances() {
			odd = append(odd, i.GetId())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	checkOnce("odd instances, page size 4", odd, func(i int) bool { return i%2 == 1 }, 12, func(i int) string { return fmt.Sprintf("inst-%02d", i) })

	// A token of one collection is refused by another.
	resp, err := f.client.ListJobProfiles(ctx, &registryv1.ListJobProfilesRequest{PageSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.client.ListServices(ctx, &registryv1.ListServicesRequest{PageToken: resp.GetNextPageToken()})
	wantCode(t, err, codes.InvalidArgument, "page_token")
}

func TestEventsSurviveEtcdAndNATSRestarts(t *testing.T) {
	t.Parallel()
	env := devenv.Start(t)
	f := setupOn(t, env)
	ev := f.events(t, "svc")
	register(t, f, "svc", "before", nil, 0)
	waitEvent(t, ev, eventsv1.ServiceInstanceChanged_KIND_UP, "before", 5*time.Second)

	restart := time.Now()
	if err := env.Etcd.Restart(); err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	t.Logf("etcd restarted in %s", time.Since(restart))
	// The client reconnects; registration works again once etcd answers.
	eventually(t, 15*time.Second, "register after etcd restart", func() bool {
		_, err := f.client.RegisterInstance(t.Context(), &registryv1.RegisterInstanceRequest{
			Service:  &registryv1.Service{Name: "svc"},
			Instance: &registryv1.ServiceInstance{Id: "after-etcd", Capacity: 1},
		})
		if err != nil {
			t.Logf("%s %v", time.Since(restart), err)
		}
		return err == nil
	})
	waitEvent(t, ev, eventsv1.ServiceInstanceChanged_KIND_UP, "after-etcd", 10*time.Second)

	if err := env.NATS.Restart(); err != nil {
		t.Fatalf("restart nats: %v", err)
	}
	// Registered while NATS may still be down: the watcher retries the
	// publish until NATS takes it.
	register(t, f, "svc", "after-nats", nil, 0)
	waitEvent(t, ev, eventsv1.ServiceInstanceChanged_KIND_UP, "after-nats", 15*time.Second)
}

func TestWatchRestartsFromCurrentRevisionWhenCompacted(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()
	for i := range 3 {
		val, err := encode(&registryv1.ServiceInstance{Id: fmt.Sprintf("c-%d", i), Service: "svc", Capacity: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.cli.Put(ctx, InstanceKey(fmt.Sprintf("c-%d", i)), val); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := f.cli.Get(ctx, InstancesPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	head := resp.Header.Revision
	if _, err := f.cli.Compact(ctx, head); err != nil {
		t.Fatal(err)
	}
	w := NewWatcher(f.cli, f.js)
	done := make(chan int64, 1)
	go func() { done <- w.watch(ctx, 1) }()
	select {
	case next := <-done:
		if next != head+1 {
			t.Errorf("resume revision after compaction = %d, want current+1 = %d", next, head+1)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch from a compacted revision did not return")
	}
}

func TestCorruptRecordIsSkippedAndRepaired(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()
	if _, err := f.cli.Put(ctx, ProfileKey("broken"), "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.PutJobProfile(ctx, &registryv1.PutJobProfileRequest{Profile: &registryv1.JobProfile{Name: "good", JobType: "AIJob"}}); err != nil {
		t.Fatal(err)
	}
	list, err := f.client.ListJobProfiles(ctx, &registryv1.ListJobProfilesRequest{})
	if err != nil || len(list.GetProfiles()) != 1 || list.GetProfiles()[0].GetName() != "good" {
		t.Fatalf("list with a corrupt record = %v, %v; want just the good one", list, err)
	}
	if _, err := f.client.PutJobProfile(ctx, &registryv1.PutJobProfileRequest{Profile: &registryv1.JobProfile{Name: "broken", JobType: "AIJob"}}); err != nil {
		t.Fatalf("replacing a corrupt record: %v", err)
	}
	if _, err := f.client.GetJobProfile(ctx, &registryv1.GetJobProfileRequest{Name: "broken"}); err != nil {
		t.Errorf("repaired record: %v", err)
	}
}
