package kvkey_test

import (
	"testing"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/services/planner/kvkey"
	"github.com/nats-io/nats.go/jetstream"
)

// Every shape of id the contract allows must work as a key of a real bucket.
func TestEveryIDShapeIsAKey(t *testing.T) {
	srv := bustest.New(t)
	kv, err := srv.JS.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "T"})
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"pkg-1", "a.b.c", "trailing.", "a..b", "x...", "A_b-C.9", "0"}
	seen := map[string]string{}
	for _, id := range ids {
		k := kvkey.For(id)
		if other, dup := seen[k]; dup {
			t.Errorf("For(%q) = For(%q) = %q", id, other, k)
		}
		seen[k] = id
		if _, err := kv.Put(t.Context(), k, []byte(id)); err != nil {
			t.Errorf("Put(For(%q) = %q): %v", id, k, err)
		}
	}
	if kvkey.For("pkg-1") != "pkg-1" {
		t.Error("a plain id is not kept as it is")
	}
}
