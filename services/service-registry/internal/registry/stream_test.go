package registry

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/registryclient"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// runCache follows the fixture's registry with a registryclient.Cache until
// the returned stop is called (or the test ends).
func runCache(t *testing.T, f *fixture, c *registryclient.Cache) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once atomic.Bool
	stop = func() {
		if once.CompareAndSwap(false, true) {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("cache run: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	wctx, wcancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer wcancel()
	if err := c.WaitSynced(wctx); err != nil {
		t.Fatal(err)
	}
	return stop
}

// storeState is what the registry holds, read straight from etcd: the
// reference a cache must equal.
func storeState(t *testing.T, f *fixture) (instances, services, profiles []string) {
	t.Helper()
	resp, err := f.cli.Get(t.Context(), KeyPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		switch {
		case len(k) > len(InstancesPrefix) && k[:len(InstancesPrefix)] == InstancesPrefix:
			instances = append(instances, k[len(InstancesPrefix):])
		case len(k) > len(ServicesPrefix) && k[:len(ServicesPrefix)] == ServicesPrefix:
			services = append(services, k[len(ServicesPrefix):])
		case len(k) > len(ProfilesPrefix) && k[:len(ProfilesPrefix)] == ProfilesPrefix:
			profiles = append(profiles, k[len(ProfilesPrefix):])
		}
	}
	return instances, services, profiles
}

func cacheState(c *registryclient.Cache) (instances, services, profiles []string) {
	for _, i := range c.AllInstances() {
		instances = append(instances, i.GetId())
	}
	for _, s := range c.Services() {
		services = append(services, s.GetName())
	}
	for _, p := range c.Profiles() {
		profiles = append(profiles, p.GetName())
	}
	return instances, services, profiles
}

// cacheMatchesStore waits until the cache holds exactly what etcd holds.
func cacheMatchesStore(t *testing.T, f *fixture, c *registryclient.Cache, within time.Duration) {
	t.Helper()
	var ci, cs, cp, si, ss, sp []string
	deadline := time.Now().Add(within)
	for {
		si, ss, sp = storeState(t, f)
		ci, cs, cp = cacheState(c)
		if slices.Equal(ci, si) && slices.Equal(cs, ss) && slices.Equal(cp, sp) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cache differs from the store after %s:\n instances %v vs %v\n services %v vs %v\n profiles %v vs %v", within, ci, si, cs, ss, cp, sp)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func putProfile(t *testing.T, f *fixture, name string) {
	t.Helper()
	if _, err := f.client.PutJobProfile(t.Context(), &registryv1.PutJobProfileRequest{Profile: &registryv1.JobProfile{Name: name, JobType: "AIJob"}}); err != nil {
		t.Fatal(err)
	}
}

func TestWatchCacheFollowsEveryKindOfChange(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()
	putProfile(t, f, "before")
	register(t, f, "svc", "i-1", []string{"p"}, 0)

	c := registryclient.NewCache(f.client)
	runCache(t, f, c)
	cacheMatchesStore(t, f, c, 5*time.Second)

	register(t, f, "svc", "i-2", []string{"p", "q"}, 0)
	putProfile(t, f, "after")
	if _, err := f.client.PutService(ctx, &registryv1.PutServiceRequest{Service: &registryv1.Service{Name: "ocr", CostPerUnit: 2}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.DeregisterInstance(ctx, &registryv1.DeregisterInstanceRequest{InstanceId: "i-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.DeleteJobProfile(ctx, &registryv1.DeleteJobProfileRequest{Name: "before"}); err != nil {
		t.Fatal(err)
	}
	cacheMatchesStore(t, f, c, 5*time.Second)
	list, err := c.Instances("p")
	if err != nil || len(list) != 1 || list[0].GetId() != "i-2" {
		t.Errorf("cache instances of p = %v, %v; want [i-2]", list, err)
	}
	if svc, ok := c.Service("ocr"); !ok || svc.GetCostPerUnit() != 2 {
		t.Errorf("cache service ocr = %v, %v", svc, ok)
	}
	// Load reported by keep-alive reaches the cache (heartbeat records are
	// written at most once a second).
	eventually(t, 5*time.Second, "in_flight reaches the cache", func() bool {
		_, _ = f.client.KeepAliveInstance(ctx, &registryv1.KeepAliveInstanceRequest{InstanceId: "i-2", InFlight: 2})
		in, ok := c.Instance("i-2")
		return ok && in.GetInFlight() == 2
	})
	if c.Resyncs() != 1 {
		t.Errorf("resyncs = %d, want only the initial snapshot", c.Resyncs())
	}
}

func TestWatchSnapshotSpansChunksAtOneRevision(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()
	n := snapshotChunk + 20
	for i := range n {
		if _, err := f.cli.Put(ctx, ProfileKey(fmt.Sprintf("p-%04d", i)), `{"name":"p","jobType":"AIJob"}`); err != nil {
			t.Fatal(err)
		}
	}
	stream, err := f.client.Watch(ctx, &registryv1.WatchRequest{Kinds: []registryv1.ResourceKind{registryv1.ResourceKind_RESOURCE_KIND_JOB_PROFILE}})
	if err != nil {
		t.Fatal(err)
	}
	var got, responses int
	var rev int64
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetResync() != (responses == 0) {
			t.Fatalf("response %d resync = %v", responses, resp.GetResync())
		}
		if rev != 0 && resp.GetRevision() != rev {
			t.Fatalf("snapshot chunks at revisions %d and %d", rev, resp.GetRevision())
		}
		rev = resp.GetRevision()
		got += len(resp.GetChanges())
		responses++
		if resp.GetSynced() {
			break
		}
	}
	if got != n || responses < 2 {
		t.Errorf("snapshot of %d profiles in %d responses, want %d in several", got, responses, n)
	}

	bad, err := f.client.Watch(ctx, &registryv1.WatchRequest{StartRevision: -1})
	if err == nil {
		_, err = bad.Recv() // a stream's status arrives with the first receive
	}
	wantCode(t, err, codes.InvalidArgument, "start_revision")
}

func TestWatchResumesAfterCompactionWithoutMissingAChange(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()
	register(t, f, "svc", "gone-while-away", []string{"p"}, 0)
	register(t, f, "svc", "stays", []string{"p"}, 0)
	putProfile(t, f, "old")

	c := registryclient.NewCache(f.client)
	stop := runCache(t, f, c)
	cacheMatchesStore(t, f, c, 5*time.Second)
	stop()
	away := c.Revision()

	// While the cache is away: changes of every kind, then etcd compacts
	// the history the cache would resume from.
	if _, err := f.client.DeregisterInstance(ctx, &registryv1.DeregisterInstanceRequest{InstanceId: "gone-while-away"}); err != nil {
		t.Fatal(err)
	}
	register(t, f, "svc", "new-while-away", []string{"p"}, 0)
	if _, err := f.client.DeleteJobProfile(ctx, &registryv1.DeleteJobProfileRequest{Name: "old"}); err != nil {
		t.Fatal(err)
	}
	putProfile(t, f, "new")
	head, err := f.cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.cli.Compact(ctx, head.Header.Revision); err != nil {
		t.Fatal(err)
	}

	runCache(t, f, c)
	cacheMatchesStore(t, f, c, 5*time.Second)
	if c.Resyncs() != 2 || c.Revision() <= away {
		t.Errorf("resyncs = %d (want 2: compaction forces a snapshot), revision %d after %d", c.Resyncs(), c.Revision(), away)
	}
	list, _ := c.Instances("p")
	var got []string
	for _, in := range list {
		got = append(got, in.GetId())
	}
	if !slices.Equal(got, []string{"new-while-away", "stays"}) {
		t.Errorf("instances of p = %v", got)
	}
}

func TestWatchResumesAfterEtcdRestartWithoutMissingAChange(t *testing.T) {
	t.Parallel()
	env := devenv.Start(t)
	f := setupOn(t, env)
	ctx := t.Context()
	register(t, f, "svc", "before", []string{"p"}, 30*time.Second)

	c := registryclient.NewCache(f.client)
	runCache(t, f, c)
	cacheMatchesStore(t, f, c, 5*time.Second)

	if err := env.Etcd.Restart(); err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	// Changes right after the restart, while watches are being re-established.
	eventually(t, 15*time.Second, "register after etcd restart", func() bool {
		_, err := f.client.RegisterInstance(ctx, &registryv1.RegisterInstanceRequest{
			Service:  &registryv1.Service{Name: "svc", Profiles: []string{"p"}},
			Instance: &registryv1.ServiceInstance{Id: "after", Capacity: 1},
		})
		return err == nil
	})
	if _, err := f.client.DeregisterInstance(ctx, &registryv1.DeregisterInstanceRequest{InstanceId: "before"}); err != nil {
		t.Fatal(err)
	}
	putProfile(t, f, "after-restart")
	cacheMatchesStore(t, f, c, 15*time.Second)
	t.Logf("cache resyncs %d, revision %d", c.Resyncs(), c.Revision())
}

func TestTwoHundredInstancesRegisterConcurrently(t *testing.T) {
	t.Parallel()
	f := setup(t)
	c := registryclient.NewCache(f.client)
	runCache(t, f, c)

	const n = 200
	var g errgroup.Group
	for i := range n {
		g.Go(func() error {
			_, err := f.client.RegisterInstance(t.Context(), &registryv1.RegisterInstanceRequest{
				Service:  &registryv1.Service{Name: fmt.Sprintf("svc-%d", i%4), Profiles: []string{"p", fmt.Sprintf("own-%d", i%4)}, Regions: []string{"eu"}},
				Instance: &registryv1.ServiceInstance{Id: fmt.Sprintf("inst-%03d", i), Capacity: 2},
			})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("concurrent registration: %v", err)
	}
	var all []string
	token := ""
	for {
		resp, err := f.client.ListInstances(t.Context(), &registryv1.ListInstancesRequest{Profile: "p", Region: "eu", PageToken: token, PageSize: 64})
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range resp.GetInstances() {
			all = append(all, in.GetId())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(all) != n || len(slices.Compact(slices.Clone(all))) != n {
		t.Fatalf("listed %d distinct instances, want %d", len(slices.Compact(slices.Clone(all))), n)
	}
	// Four services, each merging its instances' definitions without losing one.
	for s := range 4 {
		svc, err := f.client.GetService(t.Context(), &registryv1.GetServiceRequest{Name: fmt.Sprintf("svc-%d", s)})
		if err != nil || !slices.Contains(svc.GetProfiles(), fmt.Sprintf("own-%d", s)) {
			t.Errorf("service svc-%d = %v, %v", s, svc, err)
		}
	}
	eventually(t, 10*time.Second, "cache holds all 200", func() bool {
		list, _ := c.Instances("p")
		return len(list) == n
	})
	if list, _ := f.client.ListInstances(t.Context(), &registryv1.ListInstancesRequest{Region: "us"}); len(list.GetInstances()) != 0 {
		t.Errorf("region us lists %d instances, want none", len(list.GetInstances()))
	}
}

func TestCreateAndUpdateSemantics(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := t.Context()
	p := &registryv1.JobProfile{Name: "Transcode", JobType: "TransformJob", MaxAttempts: 2}
	created, err := f.client.CreateJobProfile(ctx, &registryv1.CreateJobProfileRequest{Profile: p})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.client.CreateJobProfile(ctx, &registryv1.CreateJobProfileRequest{Profile: p})
	wantCode(t, err, codes.AlreadyExists, "")
	_, err = f.client.UpdateJobProfile(ctx, &registryv1.UpdateJobProfileRequest{Profile: &registryv1.JobProfile{Name: "Nope", JobType: "AIJob"}})
	wantCode(t, err, codes.NotFound, "")
	upd := proto.CloneOf(p)
	upd.MaxAttempts = 5
	got, err := f.client.UpdateJobProfile(ctx, &registryv1.UpdateJobProfileRequest{Profile: upd})
	if err != nil || got.GetMaxAttempts() != 5 || !proto.Equal(got.GetCreateTime(), created.GetCreateTime()) {
		t.Errorf("update = %v, %v", got, err)
	}
	_, err = f.client.UpdateJobProfile(ctx, &registryv1.UpdateJobProfileRequest{Profile: &registryv1.JobProfile{Name: "Transcode"}})
	wantCode(t, err, codes.InvalidArgument, "profile.job_type")

	s := &registryv1.Service{Name: "ffmpeg", JobTypes: []string{"TransformJob"}, Profiles: []string{"Transcode"}, Regions: []string{"eu"},
		Resources: []*registryv1.ResourceEndpoint{{ResourceType: "JobAssignment", HttpEndpoint: "https://ffmpeg.example/job-assignments"}}}
	if _, err := f.client.CreateService(ctx, &registryv1.CreateServiceRequest{Service: s}); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.CreateService(ctx, &registryv1.CreateServiceRequest{Service: s})
	wantCode(t, err, codes.AlreadyExists, "")
	_, err = f.client.UpdateService(ctx, &registryv1.UpdateServiceRequest{Service: &registryv1.Service{Name: "other"}})
	wantCode(t, err, codes.NotFound, "")
	bad := proto.CloneOf(s)
	bad.Resources[0].HttpEndpoint = "ftp://x"
	_, err = f.client.UpdateService(ctx, &registryv1.UpdateServiceRequest{Service: bad})
	wantCode(t, err, codes.InvalidArgument, "service.resources[0].http_endpoint")

	// Profiles offered in a region: through the services that offer them.
	if _, err := f.client.PutJobProfile(ctx, &registryv1.PutJobProfileRequest{Profile: &registryv1.JobProfile{Name: "Elsewhere", JobType: "AIJob"}}); err != nil {
		t.Fatal(err)
	}
	list, err := f.client.ListJobProfiles(ctx, &registryv1.ListJobProfilesRequest{Region: "eu"})
	if err != nil || len(list.GetProfiles()) != 1 || list.GetProfiles()[0].GetName() != "Transcode" {
		t.Errorf("profiles in eu = %v, %v", list, err)
	}
}

// A worker shutting down gracefully (Registration.Close) is gone at once,
// not after its lease ttl, and its DOWN event follows.
func TestGracefulCloseRemovesAtOnce(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ev := f.events(t, "svc")
	reg, err := registryclient.Register(t.Context(), f.client, &registryv1.Service{Name: "svc", Profiles: []string{"p"}},
		&registryv1.ServiceInstance{Id: "w-1", Capacity: 2}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitEvent(t, ev, eventsv1.ServiceInstanceChanged_KIND_UP, "w-1", 5*time.Second)
	closed := time.Now()
	if err := reg.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := instanceIDs(t, f, &registryv1.ListInstancesRequest{}); len(got) != 0 {
		t.Fatalf("instances right after Close = %v, want none (ttl is 30s)", got)
	}
	waitEvent(t, ev, eventsv1.ServiceInstanceChanged_KIND_DOWN, "w-1", time.Second)
	t.Logf("DOWN event %s after Close", time.Since(closed).Round(time.Millisecond))
}
