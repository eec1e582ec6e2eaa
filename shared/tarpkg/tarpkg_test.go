package tarpkg_test

import (
	"path/filepath"
	"reflect"
	"testing"

	"github.com/ccatobs/ccat-staging/shared/tarpkg"
)

func TestWriteThenDescribe(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "p.tar")
	entries := tarpkg.Tree(1, 10, 64<<10)
	w, err := tarpkg.Write(dst, entries)
	if err != nil {
		t.Fatal(err)
	}
	d, err := tarpkg.Describe(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(w, d) {
		t.Errorf("Describe = %+v\nWrite gave %+v", d, w)
	}
	if len(d.Files) != 10 {
		t.Errorf("files = %d, want 10", len(d.Files))
	}
	if !reflect.DeepEqual(tarpkg.Tree(1, 10, 64<<10), entries) {
		t.Error("Tree is not deterministic")
	}
}
