package archive

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"strings"

	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3 reads keys as objects of one bucket of an S3-compatible server, with
// path-style addressing (what on-premise servers support).
type S3 struct {
	client *minio.Client
	bucket string
	prefix string
}

// NewS3 returns the backend of an S3 location. Credentials come from creds
// or, when cfg.CredentialsFile is set, from that file; never from the
// topology itself.
func NewS3(cfg topology.S3, creds Credentials) (*S3, error) {
	if cfg.CredentialsFile != "" {
		c, err := ReadCredentialsFile(cfg.CredentialsFile)
		if err != nil {
			return nil, err
		}
		creds = c
	}
	cl, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(creds.AccessKeyID, creds.SecretAccessKey, ""),
		Secure:       cfg.TLS,
		Region:       cfg.Region,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", cfg.Endpoint, err)
	}
	return &S3{client: cl, bucket: cfg.Bucket, prefix: strings.Trim(cfg.Prefix, "/")}, nil
}

// ReadCredentialsFile reads "access_key_id = …" and "secret_access_key = …"
// lines (an aws_ prefix and [section] lines are accepted, so an AWS
// credentials file with one profile works too).
func ReadCredentialsFile(name string) (Credentials, error) {
	f, err := os.Open(name)
	if err != nil {
		return Credentials{}, fmt.Errorf("s3 credentials: %w", err)
	}
	defer f.Close()
	var c Credentials
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch strings.TrimPrefix(strings.TrimSpace(k), "aws_") {
		case "access_key_id":
			c.AccessKeyID = strings.TrimSpace(v)
		case "secret_access_key":
			c.SecretAccessKey = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return Credentials{}, fmt.Errorf("s3 credentials %s: %w", name, err)
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return Credentials{}, fmt.Errorf("s3 credentials %s: access_key_id and secret_access_key are required", name)
	}
	return c, nil
}

func (s *S3) object(key string) (string, error) {
	k, err := CleanKey(key)
	if err != nil {
		return "", err
	}
	if s.prefix != "" {
		k = s.prefix + "/" + k
	}
	return path.Clean(k), nil
}

// classify: a missing object or bucket is permanent; anything else (5xx,
// timeouts, resets, throttling, even access denied, which an operator can
// fix) is worth retrying.
func (s *S3) classify(key string, err error) error {
	r := minio.ToErrorResponse(err)
	if r.Code == "NoSuchKey" || r.Code == "NoSuchBucket" || r.StatusCode == http.StatusNotFound {
		return missing(key, err)
	}
	return transient("s3 "+key, err)
}

// Size implements Backend.
func (s *S3) Size(ctx context.Context, key string) (int64, error) {
	k, err := s.object(key)
	if err != nil {
		return 0, err
	}
	st, err := s.client.StatObject(ctx, s.bucket, k, minio.StatObjectOptions{})
	if err != nil {
		return 0, s.classify(key, err)
	}
	return st.Size, nil
}

// Open implements Backend. The object is streamed by one GET; a read error
// part-way is transient, and the package is read again from the start on the
// next attempt (the one-pass hash cannot resume).
func (s *S3) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	k, err := s.object(key)
	if err != nil {
		return nil, err
	}
	// Stat first: GetObject is lazy and would report a missing object only
	// on the first Read, where it looks like a broken stream.
	st, err := s.client.StatObject(ctx, s.bucket, k, minio.StatObjectOptions{})
	if err != nil {
		return nil, s.classify(key, err)
	}
	opts := minio.GetObjectOptions{}
	// Pin the version we stat'ed, so a concurrent overwrite cannot splice
	// two objects into one stream.
	if err := opts.SetMatchETag(st.ETag); err != nil {
		return nil, transient("s3 "+key, err)
	}
	obj, err := s.client.GetObject(ctx, s.bucket, k, opts)
	if err != nil {
		return nil, s.classify(key, err)
	}
	return &s3Reader{obj: obj, s: s, key: key}, nil
}

// s3Reader classifies read errors as they surface.
type s3Reader struct {
	obj *minio.Object
	s   *S3
	key string
}

func (r *s3Reader) Read(p []byte) (int, error) {
	n, err := r.obj.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, r.s.classify(r.key, err)
	}
	return n, err
}

func (r *s3Reader) Close() error { return r.obj.Close() }
