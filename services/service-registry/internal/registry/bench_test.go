package registry

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	registryv1 "github.com/medius-platform/medius/pkg/api/medius/registry/v1"
	"github.com/medius-platform/medius/pkg/registryclient"
	"golang.org/x/sync/errgroup"
)

// BenchmarkRegistrationChurn registers 1,000 instances (64 at a time, over
// gRPC, on real etcd) then deregisters them all, per iteration, while a
// registryclient.Cache follows the churn. It reports registrations per
// second and how long the cache took to see the last deregistration.
func BenchmarkRegistrationChurn(b *testing.B) {
	// One log line per registration would be the benchmark's bottleneck.
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.DiscardHandler))
	b.Cleanup(func() { slog.SetDefault(prev) })
	f := setup(b)
	cache := registryclient.NewCache(f.client)
	ctx := b.Context()
	go func() { _ = cache.Run(ctx) }()
	if err := cache.WaitSynced(ctx); err != nil {
		b.Fatal(err)
	}
	const n = 1000
	svc := &registryv1.Service{Name: "churn", JobTypes: []string{"AIJob"}, Profiles: []string{"p"}}
	var total, lag time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		var g errgroup.Group
		g.SetLimit(64)
		for i := range n {
			g.Go(func() error {
				_, err := f.client.RegisterInstance(ctx, &registryv1.RegisterInstanceRequest{Service: svc,
					Instance: &registryv1.ServiceInstance{Id: fmt.Sprintf("churn-%04d", i), Capacity: 4}})
				return err
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		for i := range n {
			g.Go(func() error {
				_, err := f.client.DeregisterInstance(ctx, &registryv1.DeregisterInstanceRequest{InstanceId: fmt.Sprintf("churn-%04d", i)})
				return err
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		done := time.Now()
		for {
			if list, _ := cache.Instances("p"); len(list) == 0 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		lag += time.Since(done)
	}
	b.ReportMetric(float64(2*n*b.N)/total.Seconds(), "registrations+deregistrations/s")
	b.ReportMetric(float64(lag.Milliseconds())/float64(b.N), "cache-lag-ms")
}
