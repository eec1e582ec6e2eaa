package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
)

// Disk reads keys as files under Root. It opens them through os.Root, so
// not even a symlink inside the archive can lead outside it.
type Disk struct {
	Root string
}

func (d Disk) open(key string) (*os.File, error) {
	k, err := CleanKey(key)
	if err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(d.Root)
	if err != nil {
		return nil, transient("open archive root "+d.Root, err)
	}
	defer root.Close()
	f, err := root.Open(k)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, missing(key, err)
	case err != nil && isEscape(err):
		return nil, fault.Permanent(event.ReasonBadRequest, fmt.Errorf("archive key %q leads outside %s: %w", key, d.Root, err))
	case err != nil:
		return nil, transient("open "+key, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, transient("stat "+key, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, missing(key, errors.New("not a regular file"))
	}
	return f, nil
}

// isEscape recognises os.Root's refusal of a path leaving the root; the
// error is not exported, but it is the only *PathError that names no errno.
func isEscape(err error) bool {
	var pe *fs.PathError
	if !errors.As(err, &pe) {
		return false
	}
	var errno interface{ Timeout() bool }
	return !errors.As(pe.Err, &errno)
}

// Open implements Backend.
func (d Disk) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	return d.open(key)
}

// Size implements Backend.
func (d Disk) Size(ctx context.Context, key string) (int64, error) {
	f, err := d.open(key)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, transient("stat "+key, err)
	}
	return st.Size(), nil
}
