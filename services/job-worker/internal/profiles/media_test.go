package profiles

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	eventsv1 "github.com/medius-platform/medius/pkg/api/medius/events/v1"
	jobsv1 "github.com/medius-platform/medius/pkg/api/medius/jobs/v1"
	"github.com/medius-platform/medius/pkg/locator"
	"github.com/medius-platform/medius/pkg/locator/s3test"
	"github.com/medius-platform/medius/pkg/problem"
	"github.com/medius-platform/medius/pkg/workersdk"
	"google.golang.org/protobuf/types/known/structpb"
)

// store is where a test puts its input and finds its outputs: a file root
// or a bucket of a real S3 server, reached through one Resolver.
type store struct {
	name string
	res  *locator.Resolver
	root string
	s3   *s3test.Server
}

// stores returns a file-root store and an S3 store (a versitygw started for
// the test).
func stores(t *testing.T) []*store {
	t.Helper()
	srv := s3test.Start(t)
	srv.CreateBucket(t, "media")
	root := t.TempDir()
	res := &locator.Resolver{Roots: []string{root}, S3: srv.Config(), TempDir: t.TempDir()}
	return []*store{{name: "file", res: res, root: root}, {name: "s3", res: res, root: root, s3: srv}}
}

// input stores the local file src as the input called name.
func (s *store) input(t *testing.T, src, name string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if s.s3 != nil {
		s.s3.Put(t, "media", "in/"+name, b)
		return "s3://media/in/" + name
	}
	p := filepath.Join(s.root, "in", name)
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return "file://" + p
}

// outputLocation is a fresh output directory or prefix.
func (s *store) outputLocation(t *testing.T) string {
	if s.s3 != nil {
		return "s3://media/out/" + strings.ReplaceAll(t.Name(), "/", "-") + "/"
	}
	return "file://" + filepath.Join(s.root, "out", strings.ReplaceAll(t.Name(), "/", "-"))
}

// fetch returns a local copy of the output at url.
func (s *store) fetch(t *testing.T, url string) string {
	t.Helper()
	p, cleanup, err := s.res.Open(t.Context(), url)
	if err != nil {
		t.Fatalf("fetch output %s: %v", url, err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(p))
	b, err := os.ReadFile(p)
	cleanup()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}

func workItem(profile, in, out string, params map[string]any) *eventsv1.WorkItem {
	locs := map[string]*jobsv1.Locator{}
	if in != "" {
		locs[ParamInputFile] = &jobsv1.Locator{Url: in}
	}
	if out != "" {
		locs[ParamOutputLocation] = &jobsv1.Locator{Url: out}
	}
	ps, err := structpb.NewStruct(params)
	if err != nil {
		panic(err)
	}
	return &eventsv1.WorkItem{JobId: "j1", Attempt: 1, Profile: profile, Input: &jobsv1.JobInput{Locators: locs, Parameters: ps}}
}

// run calls the profile's handler, checking progress stays within 0..100
// and never goes back.
func run(t *testing.T, p workersdk.Profile, item *eventsv1.WorkItem) (*jobsv1.JobOutput, float64, error) {
	t.Helper()
	last := -1
	return p.Handler(t.Context(), item, func(v int) {
		if v < 0 || v > 100 || v < last {
			t.Errorf("progress %d after %d", v, last)
		}
		last = v
	})
}

// ffprobeStream returns ffprobe's entries of the first stream of kind.
func ffprobeStream(t *testing.T, path, kind string) map[string]string {
	t.Helper()
	out, err := exec.Command("ffprobe", "-v", "error", "-select_streams", kind+":0", "-show_entries",
		"stream=codec_name,width,height,duration:format=format_name,duration", "-of", "default=noprint_wrappers=1", path).Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v", path, err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			if _, dup := m[k]; !dup {
				m[k] = v
			}
		}
	}
	return m
}

func wantProblem(t *testing.T, err error, typ, detail string) {
	t.Helper()
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Type != typ || !strings.Contains(pe.Detail, detail) {
		t.Fatalf("err = %v, want problem %s mentioning %q", err, typ, detail)
	}
}

// badInputs are inputs every media profile must refuse with a clear
// problem: not media, truncated media, and one over the size limit.
// They are written into dir.
func badInputs(t *testing.T, dir, clip string) map[string]string {
	text := filepath.Join(dir, "notes.mp4")
	if err := os.WriteFile(text, []byte("this is not media at all\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(clip)
	if err != nil {
		t.Fatal(err)
	}
	trunc := filepath.Join(dir, "truncated.mp4")
	if err := os.WriteFile(trunc, b[:len(b)/3], 0o600); err != nil {
		t.Fatal(err)
	}
	return map[string]string{"not media": text, "truncated": trunc}
}

// childProcesses lists the pids of this process's children named comm.
func childProcesses(comm string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	me := strconv.Itoa(os.Getpid())
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.Contains(s[:i], "("+comm) {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == me {
			pid, _ := strconv.Atoi(e.Name())
			if syscall.Kill(pid, 0) == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// waitFor polls cond every 20ms for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}
