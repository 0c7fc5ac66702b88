package devenv

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The dev environment must survive restarts with its data: `make run` reuses
// ./.medius and the chaos tests restart NATS mid-run.
func TestRestartKeepsData(t *testing.T) {
	env := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	nc, err := nats.Connect(env.NATS.URL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "t", Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := env.NATS.Restart(); err != nil {
		t.Fatal(err)
	}
	var got jetstream.KeyValueEntry
	for got == nil && ctx.Err() == nil {
		if got, err = kv.Get(ctx, "k"); err != nil {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if got == nil || string(got.Value()) != "v" {
		t.Fatalf("after nats restart: got %v, %v", got, err)
	}

	cli, err := clientv3.New(clientv3.Config{Endpoints: env.Etcd.Endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := env.Etcd.Restart(); err != nil {
		t.Fatal(err)
	}
	var resp *clientv3.GetResponse
	for resp == nil && ctx.Err() == nil {
		if resp, err = cli.Get(ctx, "/k"); err != nil {
			resp = nil
			time.Sleep(50 * time.Millisecond)
		}
	}
	if resp == nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after etcd restart: got %v, %v", resp, err)
	}
}

// A port the caller chose is kept: when it is busy, StartEtcd says so
// instead of moving etcd elsewhere (a restart must come back where clients
// expect it). Only ports devenv picks itself are retried.
func TestChosenBusyPortIsReported(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = StartEtcd(t.TempDir(), l.Addr().(*net.TCPAddr).Port, 0)
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("err = %v, want EADDRINUSE", err)
	}
}
