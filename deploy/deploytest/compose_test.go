package deploytest

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"sigs.k8s.io/yaml"
)

const testAPIKey = "mk_compose_test_key"

// loadCompose loads docker-compose.yml the way `docker compose` does, with
// an .env made from deploy/compose/env.example (key filled in), or without
// any env file when envKey is empty.
func loadCompose(t *testing.T, envKey string, profiles ...string) (*types.Project, error) {
	t.Helper()
	root := repoRoot(t)
	opts := []cli.ProjectOptionsFn{cli.WithWorkingDirectory(root), cli.WithName("medius"), cli.WithProfiles(profiles)}
	if envKey != "" {
		example, err := os.ReadFile(filepath.Join(root, "deploy/compose/env.example"))
		if err != nil {
			t.Fatal(err)
		}
		env := strings.Replace(string(example), "MEDIUS_BOOTSTRAP_API_KEY=\n", "MEDIUS_BOOTSTRAP_API_KEY="+envKey+"\n", 1)
		if env == string(example) {
			t.Fatal("env.example has no empty MEDIUS_BOOTSTRAP_API_KEY= line to fill")
		}
		path := filepath.Join(t.TempDir(), ".env")
		if err := os.WriteFile(path, []byte(env), 0o600); err != nil {
			t.Fatal(err)
		}
		opts = append(opts, cli.WithEnvFiles(path), cli.WithDotEnv)
	}
	po, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return cli.ProjectFromOptions(context.Background(), po)
}

func TestComposeFile(t *testing.T) {
	p, err := loadCompose(t, testAPIKey)
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	root := repoRoot(t)
	envs := map[string]map[string]string{}
	defer func() { checkLocatorRoots(t, "docker-compose.yml", envs) }()

	// The four services, each built from a Dockerfile that exists, under
	// the image name the table (and the Kubernetes manifests) use, with every
	// setting it needs.
	for name, img := range images {
		svc, ok := p.Services[img.service]
		if !ok {
			t.Errorf("no compose service %s", img.service)
			continue
		}
		_ = name
		if svc.Build == nil {
			t.Errorf("%s: no build section", svc.Name)
			continue
		}
		ctxDir := svc.Build.Context
		if !filepath.IsAbs(ctxDir) {
			ctxDir = filepath.Join(root, ctxDir)
		}
		if st, err := os.Stat(ctxDir); err != nil || !st.IsDir() {
			t.Errorf("%s: build context %s is not a directory", svc.Name, ctxDir)
		}
		df := svc.Build.Dockerfile
		if !filepath.IsAbs(df) {
			df = filepath.Join(ctxDir, df)
		}
		if _, err := os.Stat(df); err != nil {
			t.Errorf("%s: Dockerfile: %v", svc.Name, err)
		}
		if rel, _ := filepath.Rel(root, df); rel != img.dockerfile {
			t.Errorf("%s: built from %s, want %s", svc.Name, rel, img.dockerfile)
		}
		if img.dockerfile == "deploy/docker/Dockerfile" {
			if a := svc.Build.Args["SERVICE"]; a == nil || *a != img.service {
				t.Errorf("%s: build arg SERVICE = %v, want %s", svc.Name, a, img.service)
			}
		}
		repo, _, _ := strings.Cut(svc.Image, ":")
		if repo != name {
			t.Errorf("%s: image %q, want %s:<tag>", svc.Name, svc.Image, name)
		}
		env := dockerEnv(t, df)
		for k, v := range svc.Environment {
			if v != nil {
				env[k] = *v
			}
		}
		checkSettings(t, "docker-compose.yml", img.service, env)
		envs[img.service] = env

		if svc.HealthCheck == nil || svc.HealthCheck.Disable || !slices.Contains(svc.HealthCheck.Test, "/usr/local/bin/healthcheck") {
			t.Errorf("%s: no healthcheck running the image's healthcheck binary", svc.Name)
		}
		if len(svc.DependsOn) == 0 {
			t.Errorf("%s: depends on nothing", svc.Name)
		}
		for dep, d := range svc.DependsOn {
			if d.Condition != types.ServiceConditionHealthy {
				t.Errorf("%s: depends_on %s with condition %q, want service_healthy", svc.Name, dep, d.Condition)
			}
			if p.Services[dep].HealthCheck == nil {
				t.Errorf("%s: depends on %s being healthy, but %s has no healthcheck", svc.Name, dep, dep)
			}
		}
	}
	if got := p.Services["mediator"].Environment["MEDIUS_BOOTSTRAP_API_KEY"]; got == nil || *got != testAPIKey {
		t.Errorf("mediator's bootstrap key does not come from the env file: %v", got)
	}

	// Infrastructure: JetStream and etcd keep their data in named volumes.
	nats := p.Services["nats"]
	if !slices.Contains(nats.Command, "--jetstream") || !hasNamedVolume(nats, "/data") || !slices.Contains(nats.Command, "/data") {
		t.Errorf("nats: want JetStream storing in a named volume at /data: command %v volumes %v", nats.Command, nats.Volumes)
	}
	etcd := p.Services["etcd"]
	if !hasNamedVolume(etcd, "/etcd-data") || !slices.Contains(etcd.Command, "--data-dir=/etcd-data") {
		t.Errorf("etcd: want its data dir in a named volume: command %v volumes %v", etcd.Command, etcd.Volumes)
	}
	for _, s := range []string{"nats", "etcd"} {
		if p.Services[s].HealthCheck == nil {
			t.Errorf("%s: no healthcheck", s)
		}
	}

	// Two processors; workers scale (no fixed name, no host port).
	if r := p.Services["job-processor"].Deploy; r == nil || r.Replicas == nil || *r.Replicas != 2 {
		t.Errorf("job-processor: want 2 replicas, got %+v", r)
	}
	w := p.Services["job-worker"]
	if w.ContainerName != "" || len(w.Ports) > 0 {
		t.Errorf("job-worker cannot be scaled: container_name %q, ports %v", w.ContainerName, w.Ports)
	}
	if g := w.StopGracePeriod; g == nil || int64(*g) <= int64(30e9) {
		t.Errorf("job-worker stop_grace_period %v: want longer than its 30s drain", g)
	}
	published := map[uint32]string{}
	for _, port := range p.Services["mediator"].Ports {
		published[port.Target] = port.Published
	}
	if published[8080] != "8080" || published[9090] != "9090" {
		t.Errorf("mediator publishes %v; want REST 8080 and gRPC 9090", published)
	}

	// The observability services only come with their profile.
	for _, s := range []string{"otel-collector", "jaeger", "prometheus"} {
		if _, ok := p.Services[s]; ok {
			t.Errorf("%s runs without the observability profile", s)
		}
	}
}

func hasNamedVolume(s types.ServiceConfig, target string) bool {
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeVolume && v.Target == target && v.Source != "" {
			return true
		}
	}
	return false
}

// TestComposeNeedsBootstrapKey: without the key in .env, compose refuses to
// start rather than running a mediator nobody can call.
func TestComposeNeedsBootstrapKey(t *testing.T) {
	_, err := loadCompose(t, "")
	if err == nil || !strings.Contains(err.Error(), "MEDIUS_BOOTSTRAP_API_KEY") {
		t.Fatalf("loading without MEDIUS_BOOTSTRAP_API_KEY: err = %v, want one naming the variable", err)
	}
}

// TestComposeObservabilityProfile: the collector, Jaeger and Prometheus are
// wired to the services: the collector receives OTLP on the port the
// services are told to send to, exports to Jaeger, and Prometheus scrapes
// every service on its admin port.
func TestComposeObservabilityProfile(t *testing.T) {
	p, err := loadCompose(t, testAPIKey, "observability")
	if err != nil {
		t.Fatal(err)
	}
	root := repoRoot(t)
	for _, s := range []string{"otel-collector", "jaeger", "prometheus"} {
		svc, ok := p.Services[s]
		if !ok {
			t.Fatalf("no %s in the observability profile", s)
		}
		for _, v := range svc.Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s mounts %s: %v", s, v.Source, err)
				}
			}
		}
	}

	var col struct {
		Receivers map[string]struct {
			Protocols map[string]struct{ Endpoint string }
		}
		Exporters map[string]struct{ Endpoint string }
		Service   struct {
			Pipelines map[string]struct{ Receivers, Exporters []string }
		}
	}
	readYAML(t, filepath.Join(root, "deploy/observability/otel-collector.yaml"), &col)
	grpcEP := col.Receivers["otlp"].Protocols["grpc"].Endpoint
	if portOf(t, grpcEP) != "4317" {
		t.Errorf("collector OTLP gRPC receiver on %q, want :4317", grpcEP)
	}
	example, _ := os.ReadFile(filepath.Join(root, "deploy/compose/env.example"))
	if !strings.Contains(string(example), "otel-collector:4317") {
		t.Error("env.example does not tell how to point the services at the collector")
	}
	tr := col.Service.Pipelines["traces"]
	if !slices.Contains(tr.Receivers, "otlp") || len(tr.Exporters) == 0 {
		t.Errorf("traces pipeline %+v", tr)
	}
	for _, e := range tr.Exporters {
		host, _, _ := strings.Cut(col.Exporters[e].Endpoint, ":")
		if _, ok := p.Services[host]; !ok {
			t.Errorf("collector exporter %s sends to %q, not a compose service", e, col.Exporters[e].Endpoint)
		}
	}

	var prom struct {
		ScrapeConfigs []struct {
			DNSSDConfigs []struct {
				Names []string
				Port  int
			} `json:"dns_sd_configs"`
		} `json:"scrape_configs"`
	}
	readYAML(t, filepath.Join(root, "deploy/observability/prometheus.yml"), &prom)
	scraped := map[string]int{}
	for _, sc := range prom.ScrapeConfigs {
		for _, d := range sc.DNSSDConfigs {
			for _, n := range d.Names {
				scraped[n] = d.Port
			}
		}
	}
	for _, img := range images {
		svc := p.Services[img.service]
		admin := portOf(t, *svc.Environment["MEDIUS_ADMIN_ADDR"])
		if got := scraped[img.service]; got == 0 || admin != strconv.Itoa(got) {
			t.Errorf("prometheus scrapes %s on port %d, its admin server is on %s", img.service, got, admin)
		}
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
