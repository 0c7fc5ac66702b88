package deploytest

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// manifests is a kustomize build decoded into the k8s.io/api types.
type manifests struct {
	deployments  []*appsv1.Deployment
	statefulSets []*appsv1.StatefulSet
	services     []*corev1.Service
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	pdbs         []*policyv1.PodDisruptionBudget
	hpas         []*autoscalingv2.HorizontalPodAutoscaler
}

// build runs kustomize (the library kubectl uses) on an overlay and decodes
// every object strictly: a misspelt or misplaced field fails here rather than
// being dropped by the API server.
func build(t *testing.T, overlay string) *manifests {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "deploy/k8s/overlays", overlay)
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", overlay, err)
	}
	m := &manifests{configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}}
	for _, r := range rm.Resources() {
		b, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		var obj any
		switch r.GetKind() {
		case "Deployment":
			d := &appsv1.Deployment{}
			m.deployments, obj = append(m.deployments, d), d
		case "StatefulSet":
			s := &appsv1.StatefulSet{}
			m.statefulSets, obj = append(m.statefulSets, s), s
		case "Service":
			s := &corev1.Service{}
			m.services, obj = append(m.services, s), s
		case "ConfigMap":
			c := &corev1.ConfigMap{}
			m.configMaps[r.GetName()], obj = c, c
		case "Secret":
			s := &corev1.Secret{}
			m.secrets[r.GetName()], obj = s, s
		case "PodDisruptionBudget":
			p := &policyv1.PodDisruptionBudget{}
			m.pdbs, obj = append(m.pdbs, p), p
		case "HorizontalPodAutoscaler":
			h := &autoscalingv2.HorizontalPodAutoscaler{}
			m.hpas, obj = append(m.hpas, h), h
		case "ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "Namespace":
			obj = &corev1.Namespace{}
		default:
			t.Errorf("%s: unexpected kind %s %s", overlay, r.GetKind(), r.GetName())
			continue
		}
		if err := yaml.UnmarshalStrict(b, obj); err != nil {
			t.Errorf("%s: %s %s does not decode strictly: %v", overlay, r.GetKind(), r.GetName(), err)
		}
	}
	return m
}

func TestKustomizeOverlays(t *testing.T) {
	for _, tc := range []struct {
		overlay        string
		infraReplicas  int32
		bootstrapLocal bool // the overlay generates the bootstrap Secret
	}{
		{"dev", 1, true},
		{"prod", 3, false},
	} {
		t.Run(tc.overlay, func(t *testing.T) {
			m := build(t, tc.overlay)
			checkServices(t, m, tc.overlay, tc.bootstrapLocal)
			for _, name := range []string{"nats", "etcd"} {
				ss := m.statefulSet(name)
				if ss == nil {
					t.Errorf("no %s StatefulSet", name)
					continue
				}
				if ss.Spec.Replicas == nil || *ss.Spec.Replicas != tc.infraReplicas {
					t.Errorf("%s replicas %v, want %d", name, ss.Spec.Replicas, tc.infraReplicas)
				}
				if len(ss.Spec.VolumeClaimTemplates) == 0 {
					t.Errorf("%s keeps no persistent volume", name)
				}
			}
		})
	}
}

// checkServices checks the four Medius Deployments of an overlay.
func checkServices(t *testing.T, m *manifests, overlay string, bootstrapLocal bool) {
	seen := map[string]bool{}
	envs := map[string]map[string]string{}
	defer func() { checkLocatorRoots(t, overlay, envs) }()
	for _, d := range m.deployments {
		pod := d.Spec.Template
		if len(pod.Spec.Containers) != 1 {
			t.Errorf("%s: want one container, got %d", d.Name, len(pod.Spec.Containers))
			continue
		}
		c := pod.Spec.Containers[0]
		repo, _, _ := strings.Cut(c.Image, ":")
		img, ok := images[repo]
		if !ok {
			t.Errorf("%s: image %q is built by no Dockerfile (want one of the compose images)", d.Name, c.Image)
			continue
		}
		seen[img.service] = true
		where := overlay + " Deployment " + d.Name

		// Settings: the image's ENV, then envFrom ConfigMaps, then env.
		env := dockerEnv(t, filepath.Join(repoRoot(t), img.dockerfile))
		for _, from := range c.EnvFrom {
			if from.ConfigMapRef == nil {
				continue
			}
			cm := m.configMaps[from.ConfigMapRef.Name]
			if cm == nil {
				t.Errorf("%s: envFrom ConfigMap %s is not in the build", where, from.ConfigMapRef.Name)
				continue
			}
			for k, v := range cm.Data {
				env[k] = v
			}
		}
		for _, e := range c.Env {
			switch {
			case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
				ref := e.ValueFrom.SecretKeyRef
				if s := m.secrets[ref.Name]; s != nil {
					if len(s.Data[ref.Key]) == 0 && s.StringData[ref.Key] == "" {
						t.Errorf("%s: Secret %s has no key %s", where, ref.Name, ref.Key)
					}
				} else if bootstrapLocal {
					t.Errorf("%s: Secret %s is not in the build", where, ref.Name)
				}
				env[e.Name] = "<from secret " + ref.Name + ">"
			default:
				env[e.Name] = e.Value
			}
		}
		checkSettings(t, where, img.service, env)
		envs[img.service] = env
		checkDependencies(t, m, where, env)

		// Probes on the admin port, at the paths adminserver serves.
		admin := portOf(t, env["MEDIUS_ADMIN_ADDR"])
		for kind, probe := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
			want := map[string]string{"readiness": "/readyz", "liveness": "/healthz"}[kind]
			if probe == nil || probe.HTTPGet == nil {
				t.Errorf("%s: no HTTP %s probe", where, kind)
				continue
			}
			if probe.HTTPGet.Path != want {
				t.Errorf("%s: %s probe on %s, want %s", where, kind, probe.HTTPGet.Path, want)
			}
			if got := containerPort(c, probe.HTTPGet.Port.String()); got != admin {
				t.Errorf("%s: %s probe on port %s, the admin server listens on %s", where, kind, got, admin)
			}
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() ||
			c.Resources.Limits.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: resource requests and limits must be set: %+v", where, c.Resources)
		}
		if sc := pod.Spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
			t.Errorf("%s: pod does not require a non-root user", where)
		}

		// Termination grace longer than the service's own drain.
		drain := 10 * time.Second // mediator and registry StopTimeout
		if v, ok := env["MEDIUS_DRAIN_TIMEOUT"]; ok {
			var err error
			if drain, err = time.ParseDuration(v); err != nil {
				t.Errorf("%s: MEDIUS_DRAIN_TIMEOUT %q: %v", where, v, err)
			}
		} else if img.service == "job-worker" {
			drain = 30 * time.Second
		}
		if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= drain {
			t.Errorf("%s: terminationGracePeriodSeconds %v is not longer than its %s drain", where, g, drain)
		}

		// A PodDisruptionBudget covers it; Services route to named ports.
		podLabels := labels.Set(pod.Labels)
		covered := false
		for _, pdb := range m.pdbs {
			if sel := pdb.Spec.Selector; sel != nil && labels.SelectorFromSet(sel.MatchLabels).Matches(podLabels) {
				covered = true
			}
		}
		if !covered {
			t.Errorf("%s: no PodDisruptionBudget selects its pods", where)
		}
		for _, svc := range m.services {
			if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
				continue
			}
			for _, sp := range svc.Spec.Ports {
				if containerPort(c, sp.TargetPort.String()) == "" {
					t.Errorf("%s: Service %s port %s targets %s, which the container does not expose", where, svc.Name, sp.Name, sp.TargetPort.String())
				}
			}
		}
	}
	for _, img := range images {
		if !seen[img.service] {
			t.Errorf("%s: no Deployment runs %s", overlay, img.service)
		}
	}
	hpa := false
	for _, h := range m.hpas {
		if h.Spec.ScaleTargetRef.Kind == "Deployment" && h.Spec.ScaleTargetRef.Name == "job-worker" {
			hpa = m.deployment("job-worker") != nil && h.Spec.MaxReplicas > *h.Spec.MinReplicas
		}
	}
	if !hpa {
		t.Errorf("%s: no HorizontalPodAutoscaler scales the job-worker Deployment", overlay)
	}
}

// checkDependencies: the NATS and etcd addresses a service is given name
// Services of the build (or pods behind a headless Service).
func checkDependencies(t *testing.T, m *manifests, where string, env map[string]string) {
	var hosts []string
	if v := env["MEDIUS_NATS_URL"]; v != "" {
		hosts = append(hosts, v)
	}
	for _, ep := range strings.Split(env["MEDIUS_ETCD_ENDPOINTS"], ",") {
		if ep != "" {
			hosts = append(hosts, ep)
		}
	}
	for _, h := range hosts {
		u, err := url.Parse(h)
		if err != nil || u.Hostname() == "" {
			t.Errorf("%s: %q is not a URL", where, h)
			continue
		}
		parts := strings.Split(u.Hostname(), ".")
		svcName := parts[0]
		if len(parts) > 1 { // pod.headless-service
			svcName = parts[1]
		}
		svc := m.service(svcName)
		if svc == nil {
			t.Errorf("%s: %s names no Service of the build", where, h)
			continue
		}
		found := false
		for _, p := range svc.Spec.Ports {
			if fmt.Sprint(p.Port) == u.Port() {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: Service %s has no port %s (%s)", where, svcName, u.Port(), h)
		}
	}
}

// containerPort resolves a probe or Service target port (a name or number)
// to the container's port number, or "" when the container has none.
func containerPort(c corev1.Container, port string) string {
	for _, p := range c.Ports {
		if p.Name == port || fmt.Sprint(p.ContainerPort) == port {
			return fmt.Sprint(p.ContainerPort)
		}
	}
	return ""
}

func (m *manifests) deployment(name string) *appsv1.Deployment {
	for _, d := range m.deployments {
		if d.Name == name {
			return d
		}
	}
	return nil
}

func (m *manifests) statefulSet(name string) *appsv1.StatefulSet {
	for _, s := range m.statefulSets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (m *manifests) service(name string) *corev1.Service {
	for _, s := range m.services {
		if s.Name == name {
			return s
		}
	}
	return nil
}
