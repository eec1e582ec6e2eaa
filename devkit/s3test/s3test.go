// Package s3test runs a real S3 server for tests: a versitygw process with
// its posix backend on a temp dir. The binary is looked up on PATH and in
// $(go env GOPATH)/bin, and installed there with `go install` when missing
// (about 90 s, once per machine).
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

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Module is the versitygw release the harness installs.
const Module = "github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// Test credentials of the gateway's root account.
const (
	AccessKey = "ccat-test-access"
	SecretKey = "ccat-test-secret-key-0123456789"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary returns the path of a versitygw binary, installing it if needed.
func Binary() (string, error) {
	binOnce.Do(func() {
		if p, err := exec.LookPath("versitygw"); err == nil {
			binPath = p
			return
		}
		out, err := exec.Command("go", "env", "GOPATH").Output()
		if err != nil {
			binErr = fmt.Errorf("go env GOPATH: %w", err)
			return
		}
		gopath := strings.Split(strings.TrimSpace(string(out)), string(os.PathListSeparator))[0]
		p := filepath.Join(gopath, "bin", "versitygw")
		if _, err := os.Stat(p); err == nil {
			binPath = p
			return
		}
		cmd := exec.Command("go", "install", Module)
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go install %s: %w\n%s", Module, err, out)
			return
		}
		binPath = p
	})
	return binPath, binErr
}

// Server is a running versitygw.
type Server struct {
	Endpoint string // host:port, no scheme
	Dir      string
	Client   *minio.Client
	t        testing.TB
	cmd      *exec.Cmd
	log      *bytes.Buffer
}

// Start starts a server that lives as long as t.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := Binary(); err != nil {
		t.Fatalf("s3test: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &Server{Endpoint: addr, Dir: t.TempDir(), t: t}
	s.Client, err = minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(AccessKey, SecretKey, ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	s.Restart()
	t.Cleanup(s.Stop)
	return s
}

// Stop kills the server (as a crash would); Restart brings it back on the
// same address and data.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Restart starts the server process and waits until it answers.
func (s *Server) Restart() {
	t := s.t
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("s3test: %v", err)
	}
	s.log = &bytes.Buffer{}
	cmd := exec.Command(bin, "--port", s.Endpoint, "--quiet", "posix", s.Dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+AccessKey, "ROOT_SECRET_ACCESS_KEY="+SecretKey)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("s3test: start versitygw: %v", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := s.Client.ListBuckets(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.Stop()
			t.Fatalf("s3test: versitygw not ready: %v\n%s", err, s.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Put creates the bucket if needed and uploads an object.
func (s *Server) Put(bucket, key string, data []byte) {
	t := s.t
	t.Helper()
	ctx := context.Background()
	if ok, err := s.Client.BucketExists(ctx, bucket); err != nil {
		t.Fatalf("s3test: %v", err)
	} else if !ok {
		if err := s.Client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
			t.Fatalf("s3test: make bucket: %v", err)
		}
	}
	if _, err := s.Client.PutObject(ctx, bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("s3test: put %s: %v", key, err)
	}
}
