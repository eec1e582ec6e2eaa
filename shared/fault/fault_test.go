package fault_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/ccatobs/ccat-staging/shared/fault"
)

func TestClassify(t *testing.T) {
	base := errors.New("boom")
	tests := []struct {
		name      string
		err       error
		permanent bool
		reason    string
	}{
		{"plain", base, false, "io_error"},
		{"permanent", fault.Permanent("checksum_mismatch", base), true, "checksum_mismatch"},
		{"wrapped permanent", fmt.Errorf("stage: %w", fault.Permanent("unsafe_archive", base)), true, "unsafe_archive"},
		{"transient", fault.Transient("no_space", base), false, "no_space"},
		{"nil", nil, false, "io_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fault.IsPermanent(tt.err); got != tt.permanent {
				t.Errorf("IsPermanent = %v, want %v", got, tt.permanent)
			}
			if got := fault.Reason(tt.err, "io_error"); got != tt.reason {
				t.Errorf("Reason = %q, want %q", got, tt.reason)
			}
			if tt.err != nil && !errors.Is(tt.err, base) {
				t.Errorf("errors.Is lost the cause")
			}
		})
	}
}
