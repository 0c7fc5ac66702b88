// Package devenv starts real NATS JetStream and etcd servers in-process on
// loopback. Tests use it, and so does `medius dev` (what `make run` starts):
// the platform is never run against fakes of its infrastructure.
package devenv

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.etcd.io/etcd/server/v3/embed"
)

// NATS is an embedded nats-server with JetStream on a file store.
type NATS struct {
	Server *server.Server
	URL    string
	dir    string
	port   int
}

// StartNATS starts nats-server with JetStream storing under dir. port 0 picks
// a free port; a restarted server can reuse the port of the previous one so
// clients reconnect to it.
func StartNATS(dir string, port int) (*NATS, error) {
	if port == 0 {
		port = -1
	}
	opts := &server.Options{
		ServerName: "medius-dev",
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   filepath.Join(dir, "jetstream"),
		NoSigs:     true,
		// A dev box runs many concurrent jobs; the default 1 MiB payload is plenty.
		MaxPayload: 8 << 20,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("new nats server: %w", err)
	}
	s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, errors.New("nats server not ready after 15s")
	}
	addr := s.Addr().(*net.TCPAddr)
	return &NATS{Server: s, URL: fmt.Sprintf("nats://127.0.0.1:%d", addr.Port), dir: dir, port: addr.Port}, nil
}

// Port is the client port the server listens on.
func (n *NATS) Port() int { return n.port }

// Shutdown stops the server and waits for it to finish.
func (n *NATS) Shutdown() {
	n.Server.Shutdown()
	n.Server.WaitForShutdown()
}

// Restart shuts the server down and starts a new one on the same port and
// store, as an operator restarting NATS would.
func (n *NATS) Restart() error {
	n.Shutdown()
	nn, err := StartNATS(n.dir, n.port)
	if err != nil {
		return err
	}
	*n = *nn
	return nil
}

// Etcd is an embedded single-member etcd.
type Etcd struct {
	server     *embed.Etcd
	Endpoints  []string
	dir        string
	clientPort int
	peerPort   int
}

// StartEtcd starts etcd with its data under dir. A port of 0 picks a free
// one; a restart on existing data should pass the ports it had (Ports), since
// etcd remembers its member's peer URL.
func StartEtcd(dir string, clientPort, peerPort int) (*Etcd, error) {
	// A port picked here is free only until etcd binds it: a test in another
	// package, running in parallel, may take it in between. Then try again
	// with new ports; ports the caller chose are never changed.
	for attempt := 1; ; attempt++ {
		e, err := startEtcd(dir, clientPort, peerPort)
		if err == nil || attempt == 5 || (clientPort != 0 && peerPort != 0) || !errors.Is(err, syscall.EADDRINUSE) {
			return e, err
		}
	}
}

func startEtcd(dir string, clientPort, peerPort int) (*Etcd, error) {
	var err error
	if clientPort == 0 {
		if clientPort, err = FreePort(); err != nil {
			return nil, err
		}
	}
	if peerPort == 0 {
		if peerPort, err = FreePort(); err != nil {
			return nil, err
		}
	}
	cfg := embed.NewConfig()
	cfg.Name = "medius-dev"
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.LogLevel = "error"
	cfg.Logger = "zap"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	clientURL := mustURL(fmt.Sprintf("http://127.0.0.1:%d", clientPort))
	peerURL := mustURL(fmt.Sprintf("http://127.0.0.1:%d", peerPort))
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = fmt.Sprintf("%s=%s", cfg.Name, peerURL.String())
	// A second start on existing data must not try to bootstrap a new cluster.
	if _, err := os.Stat(filepath.Join(cfg.Dir, "member")); err == nil {
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("etcd dir: %w", err)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd failed to start: %w", err)
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, errors.New("etcd not ready after 30s")
	}
	return &Etcd{server: e, Endpoints: []string{clientURL.String()}, dir: dir, clientPort: clientPort, peerPort: peerPort}, nil
}

// Ports are the client and peer ports etcd listens on.
func (e *Etcd) Ports() (client, peer int) { return e.clientPort, e.peerPort }

// Close stops etcd.
func (e *Etcd) Close() { e.server.Close() }

// Restart stops etcd and starts it again on the same ports and data.
func (e *Etcd) Restart() error {
	e.Close()
	ne, err := StartEtcd(e.dir, e.clientPort, e.peerPort)
	if err != nil {
		return err
	}
	*e = *ne
	return nil
}

// FreePort asks the kernel for a free loopback TCP port.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// FreeAddr returns "127.0.0.1:<free port>".
func FreeAddr() (string, error) {
	p, err := FreePort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

func mustURL(s string) url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return *u
}

// Env is NATS and etcd together, as tests use them.
type Env struct {
	NATS *NATS
	Etcd *Etcd
}

// Start starts NATS and etcd for a test under t.TempDir() and stops them when
// the test ends.
func Start(t testing.TB) *Env {
	t.Helper()
	dir := t.TempDir()
	n, err := StartNATS(filepath.Join(dir, "nats"), 0)
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	t.Cleanup(n.Shutdown)
	e, err := StartEtcd(filepath.Join(dir, "etcd"), 0, 0)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	return &Env{NATS: n, Etcd: e}
}
