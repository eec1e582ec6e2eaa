package unpack

import "testing"

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
