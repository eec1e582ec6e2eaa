package publish_test

import (
	"fmt"
	"testing"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/services/planner/publish"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func msgs(subj string, ids ...string) []*nats.Msg {
	var out []*nats.Msg
	for _, id := range ids {
		m := nats.NewMsg(subj)
		m.Data = []byte(id)
		m.Header.Set(jetstream.MsgIDHeader, id)
		out = append(out, m)
	}
	return out
}

func TestAll(t *testing.T) {
	srv := bustest.New(t)
	if _, err := srv.JS.CreateStream(t.Context(), jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(srv.NC, jetstream.WithPublishAsyncMaxPending(16))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 100 {
		ids = append(ids, fmt.Sprint("id-", i))
	}
	tests := []struct {
		name          string
		msgs          []*nats.Msg
		window        int
		stored, dupes int
		wantErr       bool
	}{
		{"window smaller than the batch", msgs("s.a", ids...), 8, 100, 0, false},
		{"the same ids again are duplicates", msgs("s.a", ids[:10]...), 8, 0, 10, false},
		{"window of one", msgs("s.b", "x", "y"), 1, 2, 0, false},
		{"nothing", nil, 8, 0, 0, false},
		{"no stream for the subject", msgs("nowhere", "z"), 8, 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := publish.All(t.Context(), js, tt.msgs, tt.window)
			if (err != nil) != tt.wantErr {
				t.Fatalf("All = %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && (res.Stored != tt.stored || res.Duplicates != tt.dupes) {
				t.Errorf("All = %+v, want %d stored, %d duplicates", res, tt.stored, tt.dupes)
			}
		})
	}
}
