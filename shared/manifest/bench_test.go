package manifest_test

import (
	"runtime"
	"testing"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/internal/jstest"
	"github.com/ccatobs/ccat-staging/shared/manifest"
)

// BenchmarkStoreFetch1M stores and fetches a 1,000,000-entry manifest (the
// schemas' limit) through an embedded server: the reference form's share of
// announcing and of staging such a package. Run it on a quiet machine:
//
//	go test -run '^$' -bench StoreFetch1M -benchtime 1x ./shared/manifest
//
// It reports the manifest's size and the time to store it (the rest of
// ns/op is the fetch with its verification and parse).
func BenchmarkStoreFetch1M(b *testing.B) {
	srv := jstest.New(b)
	if err := bus.Provision(b.Context(), srv.JS, bus.StreamConfig{}); err != nil {
		b.Fatal(err)
	}
	obs, err := manifest.Open(b.Context(), srv.JS)
	if err != nil {
		b.Fatal(err)
	}
	fs := files(manifest.MaxEntries)
	b.ResetTimer()
	for i := range b.N {
		sum := manifestSum(i)
		ref, err := manifest.Store(b.Context(), obs, sum, fs, b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		stored := b.Elapsed()
		got, err := manifest.Fetch(b.Context(), obs, sum, ref, b.TempDir())
		if err != nil || len(got) != len(fs) {
			b.Fatalf("fetch: %v", err)
		}
		// What a stager holds afterwards is the decoded list alone (the
		// text went through a file): measured as the heap dropping it frees.
		runtime.GC()
		var with, without runtime.MemStats
		runtime.ReadMemStats(&with)
		runtime.KeepAlive(got)
		got = nil
		runtime.GC()
		runtime.ReadMemStats(&without)
		b.ReportMetric(float64(with.HeapInuse-without.HeapInuse)/1e6, "MB-heap-list")
		b.ReportMetric(float64(ref.SizeBytes)/1e6, "MB/manifest")
		b.ReportMetric(stored.Seconds()/float64(i+1), "s-store/op")
	}
}
