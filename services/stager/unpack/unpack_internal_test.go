package unpack

import (
	"fmt"
	"testing"
)

func TestBufSize(t *testing.T) {
	tests := []struct {
		size int64
		max  int
		want int
	}{
		{0, 1 << 20, 32 << 10},
		{2560, 1 << 20, 32 << 10},
		{100 << 10, 1 << 20, 128 << 10},
		{1 << 20, 1 << 20, 1 << 20},
		{50 << 30, 1 << 20, 1 << 20},
	}
	for _, tt := range tests {
		if got := bufSize(tt.size, tt.max); got != tt.want {
			t.Errorf("bufSize(%d, %d) = %d, want %d", tt.size, tt.max, got, tt.want)
		}
	}
}

// TestTreeIndex: the open-addressing index finds every name after many
// growths, tells names in different directories apart, and finds nothing
// that was not added.
func TestTreeIndex(t *testing.T) {
	tr := newTree()
	dirs := []int32{rootNode}
	for i := range 200 {
		dirs = append(dirs, tr.add(dirs[i%len(dirs)], fmt.Sprintf("d%d", i), kindDir))
	}
	for _, d := range dirs {
		for j := range 50 {
			tr.add(d, fmt.Sprintf("f%d", j), kindFile)
		}
	}
	for i, d := range dirs {
		for j := range 50 {
			c := tr.child(d, fmt.Sprintf("f%d", j))
			if c < 0 || tr.nodes[c].parent != d || tr.name(c) != fmt.Sprintf("f%d", j) {
				t.Fatalf("dir %d: f%d not found (%d)", i, j, c)
			}
		}
		if c := tr.child(d, "f50"); c >= 0 {
			t.Fatalf("dir %d: found f50, never added", i)
		}
	}
	if got := tr.find("d0/d1/f3"); got < 0 || tr.name(got) != "f3" {
		t.Errorf("find d0/d1/f3 = %d", got)
	}
	if got := tr.find("d0/f3/x"); got >= 0 {
		t.Errorf("find below a file = %d", got)
	}
}
