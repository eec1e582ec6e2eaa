package audit_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ccatobs/ccat-staging/services/stagectl/audit"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
)

func TestPackage(t *testing.T) {
	entries := tarpkg.Tree(7, 4, 4000)
	info, err := tarpkg.WriteTo(discard{}, entries)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		change func(t *testing.T, dir string)
		want   []string // kinds, in path order
	}{
		{"intact", func(*testing.T, string) {}, nil},
		{"flipped byte", func(t *testing.T, dir string) {
			p := filepath.Join(dir, entries[1].Path)
			b := slices.Clone(entries[1].Data)
			b[len(b)/2] ^= 0xff
			write(t, p, b)
		}, []string{audit.ChecksumMismatch}},
		{"truncated", func(t *testing.T, dir string) {
			write(t, filepath.Join(dir, entries[0].Path), entries[0].Data[:10])
		}, []string{audit.SizeMismatch}},
		{"missing and extra", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, entries[2].Path)); err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(dir, "zz-notes.txt"), []byte("x"))
		}, []string{audit.MissingFile, audit.ExtraFile}},
		{"symlink instead of file", func(t *testing.T, dir string) {
			p := filepath.Join(dir, entries[3].Path)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("/etc/hostname", p); err != nil {
				t.Fatal(err)
			}
		}, []string{audit.NotRegular}},
		{"directory gone", func(t *testing.T, dir string) {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
		}, []string{audit.MissingPackage}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pkg")
			for _, e := range entries {
				write(t, filepath.Join(dir, filepath.FromSlash(e.Path)), e.Data)
			}
			tc.change(t, dir)
			r := audit.Package("pkg", dir, info.Files)
			var got []string
			for _, f := range r.Findings {
				got = append(got, f.Kind)
				if f.PackageID != "pkg" {
					t.Errorf("finding %+v: package id %q", f, f.PackageID)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("kinds = %v, want %v (%+v)", got, tc.want, r.Findings)
			}
			if tc.want == nil && (r.Files != len(entries) || r.Bytes == 0) {
				t.Errorf("hashed %d files, %d bytes; want %d files", r.Files, r.Bytes, len(entries))
			}
		})
	}
}

func write(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
