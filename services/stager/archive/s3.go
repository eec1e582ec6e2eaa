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
	client   *minio.Client
	bucket   string
	prefix   string
	parts    int
	partSize int64
	stats    *partStats // shared by every read of this location, see Collectors
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
	parts, partSize := cfg.Parts, cfg.PartSize
	if parts < 0 || partSize < 0 {
		return nil, fmt.Errorf("s3 location %s: parts (%d) and part_size (%d) must not be negative", cfg.Endpoint, parts, partSize)
	}
	if parts == 0 {
		parts = DefaultParts
	}
	if partSize == 0 {
		partSize = DefaultPartSize
	}
	return &S3{client: cl, bucket: cfg.Bucket, prefix: strings.Trim(cfg.Prefix, "/"),
		parts: parts, partSize: partSize, stats: &partStats{}}, nil
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

// Open implements Backend. The object is read by parallel ranged GETs
// (the location's parts × part_size) and handed out in order; every GET is
// conditional on the ETag stat'ed here (If-Match), so an object replaced
// mid-read fails with ErrObjectChanged instead of splicing two versions into
// one stream. A part that fails is fetched again a bounded number of times;
// after that the read fails transiently and the package is read again from
// the start on the next attempt (the one-pass hash cannot resume).
func (s *S3) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	k, err := s.object(key)
	if err != nil {
		return nil, err
	}
	// Stat first: it gives the size the parts are cut from and the ETag
	// every part is pinned to, and a missing object is reported here rather
	// than as a broken stream.
	st, err := s.client.StatObject(ctx, s.bucket, k, minio.StatObjectOptions{})
	if err != nil {
		return nil, s.classify(key, err)
	}
	if st.ETag == "" {
		return nil, transient("s3 "+key, errors.New("the server sent no ETag, so the read cannot be pinned to one version"))
	}
	if st.Size == 0 {
		return io.NopCloser(strings.NewReader("")), nil
	}
	get := func(ctx context.Context, off int64, dst []byte) error {
		return s.getRange(ctx, key, k, st.ETag, st.Size, off, dst)
	}
	return newPartReader(ctx, "s3 "+key, st.Size, s.partSize, s.parts, get, s.stats), nil
}

// getRange GETs bytes off … off+len(dst)-1 of version etag into dst. The
// response must be the range asked for, of that version: a server that
// ignored Range or If-Match must not hand us the wrong bytes.
func (s *S3) getRange(ctx context.Context, key, k, etag string, size, off int64, dst []byte) error {
	end := off + int64(len(dst)) - 1
	opts := minio.GetObjectOptions{}
	if err := opts.SetMatchETag(etag); err != nil {
		return err
	}
	if err := opts.SetRange(off, end); err != nil {
		return err
	}
	s.stats.gets.Add(1)
	body, info, hdr, err := minio.Core{Client: s.client}.GetObject(ctx, s.bucket, k, opts)
	if err != nil {
		r := minio.ToErrorResponse(err)
		if r.StatusCode == http.StatusPreconditionFailed || r.Code == "PreconditionFailed" {
			return fmt.Errorf("%w (ETag %s no longer matches): %w", ErrObjectChanged, etag, err)
		}
		if r.Code == "NoSuchKey" || r.StatusCode == http.StatusNotFound {
			// Stat'ed a moment ago: deleted mid-read, which is a change too.
			return fmt.Errorf("%w (deleted): %w", ErrObjectChanged, err)
		}
		return s.classify(key, err)
	}
	defer body.Close()
	if got := strings.Trim(info.ETag, `"`); got != "" && got != strings.Trim(etag, `"`) {
		return fmt.Errorf("%w (ETag %s, now %s)", ErrObjectChanged, etag, got)
	}
	want := fmt.Sprintf("bytes %d-%d/%d", off, end, size)
	if cr := hdr.Get("Content-Range"); cr != want && !(cr == "" && off == 0 && int64(len(dst)) == size) {
		return fmt.Errorf("asked for %s, the server sent Content-Range %q", want, cr)
	}
	if _, err := io.ReadFull(body, dst); err != nil {
		return fmt.Errorf("reading bytes %d-%d: %w", off, end, err)
	}
	s.stats.bytes.Add(int64(len(dst)))
	return nil
}
