package planner

import (
	"testing"

	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
)

// TestStaleDestination: the ledger's answer has no null destination, so a
// package without its own (an empty site) is staged where its job goes,
// and with neither there is none to re-issue to.
func TestStaleDestination(t *testing.T) {
	us := ledgerapi.Place{Site: "us", Location: "us-proc"}
	eu := ledgerapi.Place{Site: "eu", Location: "eu-proc"}
	tests := []struct {
		name     string
		job, pkg ledgerapi.Place
		want     ledgerapi.Place
		ok       bool
	}{
		{"package's own", eu, us, us, true},
		{"job's when the package has none", eu, ledgerapi.Place{}, eu, true},
		{"job's when the package has only a location", eu, ledgerapi.Place{Location: "x"}, eu, true},
		{"none", ledgerapi.Place{}, ledgerapi.Place{}, ledgerapi.Place{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := stale{jobDest: tt.job, pkg: ledgerapi.Package{PackageID: "p", Destination: tt.pkg}}
			got, ok := c.destination()
			if ok != tt.ok || (ok && got != tt.want) {
				t.Errorf("destination() = %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}
