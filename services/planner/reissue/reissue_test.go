package reissue_test

import (
	"errors"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/services/planner/reissue"
)

func TestClaimIsCompareAndSet(t *testing.T) {
	srv := bustest.New(t)
	st, err := reissue.Open(t.Context(), srv.JS, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	cur, rev, err := st.Current(ctx, "j", "p.")
	if err != nil || cur.Generation != 1 || rev != 0 {
		t.Fatalf("Current of a fresh package = %+v, %d, %v", cur, rev, err)
	}
	next := reissue.State{Generation: 2, Why: "lost", At: time.Now()}
	if err := st.Claim(ctx, "j", "p.", rev, next); err != nil {
		t.Fatal(err)
	}
	// A second planner that read the same state loses.
	if err := st.Claim(ctx, "j", "p.", rev, next); !errors.Is(err, reissue.ErrLost) {
		t.Fatalf("second Create-claim = %v, want ErrLost", err)
	}
	cur, rev2, err := st.Current(ctx, "j", "p.")
	if err != nil || cur.Generation != 2 || cur.Why != "lost" {
		t.Fatalf("Current = %+v, %v", cur, err)
	}
	next.Generation = 3
	if err := st.Claim(ctx, "j", "p.", rev2, next); err != nil {
		t.Fatal(err)
	}
	if err := st.Claim(ctx, "j", "p.", rev2, next); !errors.Is(err, reissue.ErrLost) {
		t.Fatalf("stale Update-claim = %v, want ErrLost", err)
	}
}
