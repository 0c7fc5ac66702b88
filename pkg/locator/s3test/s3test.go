// Package s3test starts a real S3 server for tests: versitygw with its posix
// backend on a temporary directory. The binary is taken from PATH or
// GOBIN/GOPATH/bin, else installed once with `go install` (Version).
package s3test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/medius-platform/medius/pkg/locator"
)

// Version of versitygw installed when none is found.
const Version = "v1.8.0"

// Server is a running S3 server.
type Server struct {
	Endpoint  string
	AccessKey string
	SecretKey string
	Region    string
	// Dir is the posix backend's root: bucket b's object k is Dir/b/k.
	Dir string
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary returns the path of versitygw, installing it if needed.
func Binary() (string, error) {
	binOnce.Do(func() {
		if p, err := exec.LookPath("versitygw"); err == nil {
			binPath = p
			return
		}
		gobin := goEnv("GOBIN")
		if gobin == "" {
			gobin = filepath.Join(strings.SplitN(goEnv("GOPATH"), string(os.PathListSeparator), 2)[0], "bin")
		}
		p := filepath.Join(gobin, "versitygw")
		if _, err := os.Stat(p); err == nil {
			binPath = p
			return
		}
		cmd := exec.Command("go", "install", "github.com/versity/versitygw/cmd/versitygw@"+Version)
		// Outside the workspace: versitygw has its own module graph.
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
		cmd.Dir = os.TempDir()
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go install versitygw@%s: %w\n%s", Version, err, out)
			return
		}
		binPath = p
	})
	return binPath, binErr
}

func goEnv(k string) string {
	out, err := exec.Command("go", "env", k).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// Start runs a versitygw on a free loopback port until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{AccessKey: "medius-test", SecretKey: "medius-test-secret", Region: "us-east-1", Dir: t.TempDir()}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var logs bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--port", addr, "--access", s.AccessKey, "--secret", s.SecretKey,
		"--region", s.Region, "--quiet", "posix", s.Dir)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start versitygw: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cancel()
		<-exited
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("versitygw exited: %s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw not listening on %s after 20s: %s", addr, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.Endpoint = "http://" + addr
	return s
}

// Config is the locator configuration that reaches s.
func (s *Server) Config() *locator.S3Config {
	return &locator.S3Config{Endpoint: s.Endpoint, Region: s.Region, AccessKey: s.AccessKey, SecretKey: s.SecretKey}
}

// Client is an S3 client of s, for tests to create buckets and read objects.
func (s *Server) Client() *s3.Client {
	return locator.NewS3Client(s.Config())
}

// CreateBucket creates bucket through the S3 API.
func (s *Server) CreateBucket(t testing.TB, bucket string) {
	t.Helper()
	if _, err := s.Client().CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
}

// Put stores data at bucket/key through the S3 API.
func (s *Server) Put(t testing.TB, bucket, key string, data []byte) {
	t.Helper()
	if _, err := s.Client().PutObject(t.Context(), &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(data)}); err != nil {
		t.Fatalf("put s3://%s/%s: %v", bucket, key, err)
	}
}

// Get reads bucket/key through the S3 API.
func (s *Server) Get(t testing.TB, bucket, key string) []byte {
	t.Helper()
	out, err := s.Client().GetObject(t.Context(), &s3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		t.Fatalf("get s3://%s/%s: %v", bucket, key, err)
	}
	defer out.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(out.Body); err != nil {
		t.Fatalf("read s3://%s/%s: %v", bucket, key, err)
	}
	return b.Bytes()
}
