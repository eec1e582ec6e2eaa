package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
)

// EnsureStream creates sc when it is missing and updates it only when the
// existing stream differs in a setting that sc fixes. A service whose NATS
// user may look at streams but not change them (a stager or the ledger
// under the least-privilege permissions of deploy/nats) so starts against
// streams its provisioner set up, instead of waiting out a refused update:
// a refused request gets no reply, only a timeout.
func EnsureStream(ctx context.Context, js jetstream.StreamManager, sc jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, sc.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		s, err = js.CreateStream(ctx, sc)
		if err != nil {
			return nil, fmt.Errorf("create stream %s: %w", sc.Name, err)
		}
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("stream %s: %w", sc.Name, err)
	}
	if diff := StreamDiff(s.CachedInfo().Config, sc); diff != "" {
		s, err = js.UpdateStream(ctx, sc)
		if err != nil {
			return nil, fmt.Errorf("update stream %s (%s differs): %w", sc.Name, diff, err)
		}
	}
	return s, nil
}

// StreamDiff names the first setting that want fixes and have does not
// match, or returns "". Settings want leaves at their zero value are the
// server's to choose and never differ; the description is cosmetic.
func StreamDiff(have, want jetstream.StreamConfig) string {
	switch {
	case !slices.Equal(sorted(have.Subjects), sorted(want.Subjects)):
		return "subjects"
	case have.Retention != want.Retention:
		return "retention"
	case have.Storage != want.Storage:
		return "storage"
	case have.Discard != want.Discard:
		return "discard"
	case have.MaxAge != want.MaxAge:
		return "max_age"
	case want.Replicas != 0 && have.Replicas != want.Replicas:
		return "replicas"
	case want.MaxBytes != 0 && have.MaxBytes != want.MaxBytes:
		return "max_bytes"
	case want.Duplicates != 0 && have.Duplicates != want.Duplicates:
		return "duplicate_window"
	}
	return ""
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
