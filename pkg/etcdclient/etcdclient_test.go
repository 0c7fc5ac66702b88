package etcdclient_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/medius-platform/medius/pkg/devenv"
	"github.com/medius-platform/medius/pkg/etcdclient"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// A watch whose connection hangs (stops carrying bytes without being closed,
// as a partition or an etcd host dying without RST does) must still deliver
// later changes: keepalive drops the hung connection and clientv3 reopens
// the watch on a new one from the revision it had reached. Without keepalive
// the watch waits on the dead connection for good and this test fails.
func TestWatchSurvivesHungConnection(t *testing.T) {
	e, err := devenv.StartEtcd(t.TempDir(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	direct := newClient(t, e.Endpoints)
	proxy := startHangingProxy(t, e.Endpoints[0])
	cli := newClient(t, []string{"http://" + proxy.addr()})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The client works: what it writes it reads back.
	if _, err := cli.Put(ctx, "/etcdclient-test/k/0", "zero"); err != nil {
		t.Fatalf("put through the client: %v", err)
	}
	resp, err := cli.Get(ctx, "/etcdclient-test/k/0")
	if err != nil {
		t.Fatalf("get through the client: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "zero" {
		t.Fatalf("get /etcdclient-test/k/0 = %v, want one key with value zero", resp.Kvs)
	}

	wch := cli.Watch(ctx, "/etcdclient-test/k/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	if _, err := direct.Put(ctx, "/etcdclient-test/k/1", "one"); err != nil {
		t.Fatal(err)
	}
	waitForKey(t, wch, "/etcdclient-test/k/1", 30*time.Second)

	// The watch's connection hangs; new connections still get through, as
	// they would to another etcd member or once the route is back.
	if n := proxy.hangAll(); n == 0 {
		t.Fatal("no connection through the proxy to hang")
	}
	if _, err := direct.Put(ctx, "/etcdclient-test/k/2", "two"); err != nil {
		t.Fatal(err)
	}
	// Keepalive needs DialKeepAliveTime + DialKeepAliveTimeout (15s) to give
	// up on the hung connection; the limit only stops a hang.
	waitForKey(t, wch, "/etcdclient-test/k/2", 90*time.Second)
}

func newClient(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := etcdclient.New(endpoints, etcdclient.WithLogger(zap.NewNop()))
	if err != nil {
		t.Fatalf("etcd client %v: %v", endpoints, err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// waitForKey reads wch until it delivers a put of key. limit only bounds a
// watch that never delivers.
func waitForKey(t *testing.T, wch clientv3.WatchChan, key string, limit time.Duration) {
	t.Helper()
	timeout := time.After(limit)
	for {
		select {
		case wr, ok := <-wch:
			if !ok {
				t.Fatalf("watch closed before %s arrived", key)
			}
			if err := wr.Err(); err != nil {
				t.Fatalf("watch failed before %s arrived: %v", key, err)
			}
			for _, ev := range wr.Events {
				if string(ev.Kv.Key) == key {
					return
				}
			}
		case <-timeout:
			t.Fatalf("watch did not deliver %s within %v", key, limit)
		}
	}
}

// hangingProxy forwards TCP connections to an etcd endpoint and can make the
// connections it holds hang: they stay open but every byte either way is
// dropped, so neither side sees a close or a reset. Connections accepted
// later are forwarded normally.
type hangingProxy struct {
	ln       net.Listener
	target   string
	accepted chan struct{}  // closed when accept has returned
	wg       sync.WaitGroup // the pipes

	mu    sync.Mutex
	conns []*proxiedConn
}

type proxiedConn struct {
	client, server net.Conn
	hung           atomic.Bool
}

func startHangingProxy(t *testing.T, targetURL string) *hangingProxy {
	t.Helper()
	target := targetURL[len("http://"):]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &hangingProxy{ln: ln, target: target, accepted: make(chan struct{})}
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *hangingProxy) addr() string { return p.ln.Addr().String() }

func (p *hangingProxy) accept() {
	defer close(p.accepted)
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // listener closed
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		pc := &proxiedConn{client: c, server: s}
		p.mu.Lock()
		p.conns = append(p.conns, pc)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(pc, s, c)
		go p.pipe(pc, c, s)
	}
}

// pipe copies src to dst until either side closes, dropping what it reads
// while pc hangs.
func (p *hangingProxy) pipe(pc *proxiedConn, dst, src net.Conn) {
	defer p.wg.Done()
	defer pc.close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !pc.hung.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (pc *proxiedConn) close() {
	_ = pc.client.Close()
	_ = pc.server.Close()
}

// hangAll makes every connection held now hang and says how many there were.
func (p *hangingProxy) hangAll() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pc := range p.conns {
		pc.hung.Store(true)
	}
	return len(p.conns)
}

func (p *hangingProxy) close() {
	_ = p.ln.Close()
	<-p.accepted // no connection is added from here on
	p.mu.Lock()
	for _, pc := range p.conns {
		pc.close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
