// Package devstack runs the whole Medius platform on one machine: embedded
// NATS JetStream and etcd (pkg/devenv) plus the four service binaries as
// child processes wired to them. `medius dev` (what `make run` starts) and the
// end-to-end tests both use it, so what a user tries is what the tests prove.
package devstack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/medius-platform/medius/pkg/devenv"
)

// Service binary names, in start order: the registry first (workers register
// with it, the mediator validates profiles against it), the mediator last.
var Services = []string{"service-registry", "job-worker", "job-processor", "mediator"}

// Config describes a dev stack.
type Config struct {
	// Dir holds NATS and etcd data, logs and the bootstrap key; reused by a
	// later start.
	Dir string
	// BinDir holds the four service binaries.
	BinDir string
	// RESTAddr and GRPCAddr are the mediator's public addresses.
	RESTAddr string
	GRPCAddr string
	// APIKey is the bootstrap tenant's API key; generated (and kept in Dir)
	// when empty.
	APIKey string
	// ClientID and ClientSecret are the bootstrap tenant's client
	// credentials for the token exchange; AdminKey manages tenants. Each is
	// generated (and kept in Dir) when empty.
	ClientID     string
	ClientSecret string
	AdminKey     string
	// FileRoots are the directories file:// locators may name: the
	// workers' --file-roots, and the bootstrap tenant's locator roots
	// (LocatorRoots).
	FileRoots []string
	// Workers is the number of job-worker processes (default 1).
	Workers int
	// Processors is the number of job-processor replicas (default 1).
	Processors int
	// Logs receives the children's output; nil writes Dir/logs/<name>.log.
	Logs io.Writer
	// Env is added to every child's environment (e.g. MEDIUS_LOG_LEVEL=debug).
	Env []string
	// Args adds flags per service binary name.
	Args map[string][]string
}

// Stack is a running dev platform.
type Stack struct {
	cfg          Config
	NATS         *devenv.NATS
	Etcd         *devenv.Etcd
	RESTAddr     string
	GRPCAddr     string
	RegistryAddr string
	APIKey       string
	ClientID     string
	ClientSecret string
	AdminKey     string
	// LocatorRoots are the bootstrap tenant's: file://<root>/ for each of
	// Config.FileRoots.
	LocatorRoots []string

	mu    sync.Mutex
	procs []*Process
}

// Process is one child service.
type Process struct {
	Name      string
	AdminAddr string
	args      []string
	env       []string
	out       io.Writer
	closeOut  func() error
	// logPath is the file out writes to ("" when the caller gave a writer).
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

type ports struct {
	EtcdClient int `json:"etcdClient"`
	EtcdPeer   int `json:"etcdPeer"`
}

// Start brings the platform up and returns once every service is ready and
// the built-in job profiles are registered. On error everything started is
// stopped again.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	if cfg.Workers == 0 {
		cfg.Workers = 1
	}
	if cfg.Processors == 0 {
		cfg.Processors = 1
	}
	if cfg.RESTAddr == "" {
		cfg.RESTAddr = "127.0.0.1:8080"
	}
	if cfg.GRPCAddr == "" {
		cfg.GRPCAddr = "127.0.0.1:9090"
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	for _, name := range Services {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, name)); err != nil {
			return nil, fmt.Errorf("service binary %s: %w (build with `make build`)", name, err)
		}
	}
	s := &Stack{cfg: cfg, RESTAddr: cfg.RESTAddr, GRPCAddr: cfg.GRPCAddr}
	if s.LocatorRoots, err = LocatorRoots(cfg.FileRoots); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	if s.APIKey, err = keptSecret(cfg.Dir, "bootstrap-api-key", cfg.APIKey, "mk_", 24); err != nil {
		return nil, err
	}
	if s.ClientID, err = keptSecret(cfg.Dir, "bootstrap-client-id", cfg.ClientID, "mc_", 8); err != nil {
		return nil, err
	}
	if s.ClientSecret, err = keptSecret(cfg.Dir, "bootstrap-client-secret", cfg.ClientSecret, "mk_", 24); err != nil {
		return nil, err
	}
	if s.AdminKey, err = keptSecret(cfg.Dir, "admin-api-key", cfg.AdminKey, "ma_", 24); err != nil {
		return nil, err
	}
	if s.NATS, err = devenv.StartNATS(filepath.Join(cfg.Dir, "nats"), 0); err != nil {
		return nil, err
	}
	p := loadPorts(cfg.Dir)
	if s.Etcd, err = devenv.StartEtcd(filepath.Join(cfg.Dir, "etcd"), p.EtcdClient, p.EtcdPeer); err != nil {
		return nil, err
	}
	p.EtcdClient, p.EtcdPeer = s.Etcd.Ports()
	savePorts(cfg.Dir, p)

	if s.RegistryAddr, err = devenv.FreeAddr(); err != nil {
		return nil, err
	}
	common := []string{"--nats-url", s.NATS.URL, "--etcd-endpoints", strings.Join(s.Etcd.Endpoints, ",")}
	for _, name := range Services {
		n := 1
		if name == "job-worker" {
			n = cfg.Workers
		}
		if name == "job-processor" {
			n = cfg.Processors
		}
		for i := 0; i < n; i++ {
			args := append([]string{}, common...)
			var env []string
			switch name {
			case "service-registry":
				args = append(args, "--grpc-addr", s.RegistryAddr)
			case "job-worker":
				args = append(args, "--registry-addr", s.RegistryAddr, "--allow-private-urls=true",
					"--instance-id", fmt.Sprintf("dev-worker-%d", i+1))
				if len(cfg.FileRoots) > 0 {
					args = append(args, "--file-roots", strings.Join(cfg.FileRoots, ","))
				}
			case "job-processor":
				args = append(args, "--registry-addr", s.RegistryAddr)
			case "mediator":
				args = append(args, "--registry-addr", s.RegistryAddr, "--grpc-addr", cfg.GRPCAddr,
					"--http-addr", cfg.RESTAddr, "--bootstrap-client-id", s.ClientID, "--allow-private-webhooks=true")
				// The default tenant may name what the workers may read;
				// other tenants get roots of their own from an admin.
				if len(s.LocatorRoots) > 0 {
					args = append(args, "--bootstrap-locator-roots", strings.Join(s.LocatorRoots, ","))
				}
				// Secrets go in the environment, not the command line that
				// any local user can read with ps.
				env = []string{"MEDIUS_BOOTSTRAP_API_KEY=" + s.APIKey,
					"MEDIUS_BOOTSTRAP_CLIENT_SECRET=" + s.ClientSecret, "MEDIUS_ADMIN_API_KEY=" + s.AdminKey}
			}
			args = append(args, cfg.Args[name]...)
			label := name
			if n > 1 {
				label = fmt.Sprintf("%s-%d", name, i+1)
			}
			proc, err := s.start(ctx, label, name, args, env)
			if err != nil {
				return nil, err
			}
			if err := proc.WaitReady(ctx, 60*time.Second); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// LocatorRoots are the locator roots naming the directories fileRoots:
// file://<absolute dir>/ each (a comma escaped, as they travel as a comma
// list).
func LocatorRoots(fileRoots []string) ([]string, error) {
	var out []string
	for _, dir := range fileRoots {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, fmt.Errorf("file root %q: %w", dir, err)
		}
		p := filepath.ToSlash(abs)
		if !strings.HasSuffix(p, "/") {
			p += "/"
		}
		out = append(out, strings.ReplaceAll((&url.URL{Scheme: "file", Path: p}).String(), ",", "%2C"))
	}
	return out, nil
}

func (s *Stack) start(ctx context.Context, label, bin string, args, env []string) (*Process, error) {
	admin, err := devenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	p := &Process{Name: label, AdminAddr: admin, env: append(append(os.Environ(), s.cfg.Env...), env...)}
	p.args = append([]string{filepath.Join(s.cfg.BinDir, bin), "--admin-addr", admin}, args...)
	if s.cfg.Logs != nil {
		p.out = s.cfg.Logs
	} else {
		dir := filepath.Join(s.cfg.Dir, "logs")
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("log dir: %w", err)
		}
		f, err := os.OpenFile(filepath.Join(dir, label+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return nil, fmt.Errorf("log file: %w", err)
		}
		p.out, p.closeOut, p.logPath = f, f.Close, f.Name()
	}
	if err := p.Start(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p, nil
}

// Processes lists the running children.
func (s *Stack) Processes() []*Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Process(nil), s.procs...)
}

// Process returns the child with that name (e.g. "mediator", "job-worker-2").
func (s *Stack) Process(name string) *Process {
	for _, p := range s.Processes() {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Stop sends SIGTERM to every child in reverse start order (the mediator
// stops taking jobs first, the registry goes last), waits for each to drain,
// then stops etcd and NATS. Safe to call more than once.
func (s *Stack) Stop() {
	// Stopped once: a second call (a deferred one after an explicit one)
	// finds nothing left to stop.
	s.mu.Lock()
	procs := s.procs
	s.procs = nil
	s.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Stop(45 * time.Second); err != nil {
			slog.Warn("stop service", "service", procs[i].Name, "err", err)
		}
	}
	if s.Etcd != nil {
		s.Etcd.Close()
		s.Etcd = nil
	}
	if s.NATS != nil {
		s.NATS.Shutdown()
		s.NATS = nil
	}
}

// Start runs the process.
func (p *Process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd := exec.Command(p.args[0], p.args[1:]...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = p.out, p.out
	// Its own process group, so a Ctrl-C to `medius dev` reaches the children
	// only through our orderly Stop.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	p.cmd, p.done, p.err = cmd, make(chan struct{}), nil
	go func(done chan struct{}) {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}(p.done)
	return nil
}

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	select {
	case <-done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// LogPath is the file the process logs to ("" when the stack was given a
// writer).
func (p *Process) LogPath() string { return p.logPath }

// logTail returns the last n lines of the process's log file, to say why
// it stopped without sending the user to the file ("" without a file).
func (p *Process) logTail(n int) string {
	if p.logPath == "" {
		return ""
	}
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	lines = lines[max(len(lines)-n, 0):]
	return "\n  " + strings.Join(lines, "\n  ") + "\n  (" + p.logPath + ")"
}

// Pid is the running process's id (0 before its start).
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return errors.New("not started")
	}
	return p.cmd.Process.Signal(sig)
}

// Kill kills the process with SIGKILL (what a crash looks like) and waits.
func (p *Process) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	<-done
}

// Stop sends SIGTERM and waits up to grace before killing. It returns the
// process's exit error (nil for a clean exit).
func (p *Process) Stop(grace time.Duration) error {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return nil
	}
	if exited, _ := p.Exited(); !exited {
		_ = p.Signal(syscall.SIGTERM)
	}
	select {
	case <-done:
	case <-time.After(grace):
		_ = p.Signal(syscall.SIGKILL)
		<-done
		return fmt.Errorf("%s did not stop within %s after SIGTERM", p.Name, grace)
	}
	if p.closeOut != nil {
		defer func() { _ = p.closeOut(); p.closeOut = nil }()
	}
	_, err := p.Exited()
	return err
}

// Restart starts the process again with the same arguments and waits until
// it is ready.
func (p *Process) Restart(ctx context.Context) error {
	if err := p.Start(); err != nil {
		return err
	}
	return p.WaitReady(ctx, 60*time.Second)
}

// WaitReady polls the process's /readyz until it answers 200, the process
// exits, or timeout passes.
func (p *Process) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	url := "http://" + p.AdminAddr + "/readyz"
	var last string
	for {
		if exited, err := p.Exited(); exited {
			return fmt.Errorf("%s exited while starting: %v%s", p.Name, err, p.logTail(3))
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready (last: %s): %w", p.Name, last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// keptSecret returns given, else the value kept in dir/name from an earlier
// start, else a new random one (kept for the next start).
func keptSecret(dir, name, given, prefix string, n int) (string, error) {
	if given != "" {
		return given, nil
	}
	path := filepath.Join(dir, name)
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		return "", fmt.Errorf("generate %s: %w", name, err)
	}
	v := prefix + hex.EncodeToString(buf)
	if err := os.WriteFile(path, []byte(v+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("keep %s: %w", name, err)
	}
	return v, nil
}

func loadPorts(dir string) ports {
	var p ports
	if b, err := os.ReadFile(filepath.Join(dir, "ports.json")); err == nil {
		_ = json.Unmarshal(b, &p)
	}
	return p
}

func savePorts(dir string, p ports) {
	b, _ := json.Marshal(p)
	_ = os.WriteFile(filepath.Join(dir, "ports.json"), b, 0o640)
}
