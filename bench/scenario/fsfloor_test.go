package scenario

import (
	"testing"
)

// The floor finishes and reports a rate: the errgroup's context is
// cancelled once Wait returns, so only the caller's context may end it.
func TestFSFloorReturnsARate(t *testing.T) {
	rate, err := fsFloor(t.Context(), t.TempDir(), 2, 20)
	if err != nil {
		t.Fatalf("fsFloor: %v", err)
	}
	if rate <= 0 {
		t.Errorf("rate %v, want > 0", rate)
	}
}
