// Package route decides where a job goes and where each of its packages is
// read from. It is pure (topology and catalog copies in, decisions out), so
// every routing rule is tested without a server; it deliberately knows
// nothing about JetStream, events on the wire or job bookkeeping.
package route

import (
	"fmt"
	"slices"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/topology"
)

// Copy is one archive copy of a package, as the catalog records it.
type Copy struct {
	Location  string       `json:"location"`
	Key       string       `json:"key"`
	SizeBytes int64        `json:"size_bytes"`
	Checksum  string       `json:"checksum"`
	Format    string       `json:"format"`
	Files     []event.File `json:"files,omitempty"`
	// Manifest replaces Files for a list too large for a KV value or a
	// request (stored in the MANIFESTS object store).
	Manifest *event.ManifestRef `json:"manifest,omitempty"`
}

// Refusal is why a destination cannot be used: a stable reason code from the
// event package and a message for humans.
type Refusal struct {
	Reason  string
	Message string
}

func (r *Refusal) Error() string { return r.Reason + ": " + r.Message }

// Destination resolves what a client asked for into one processing location.
// {"site"} means the site's first active processing location (lowest
// priority number); {"location"} must name an active processing location.
// It returns a *Refusal when the request cannot be served.
func Destination(t *topology.Topology, d event.Destination) (topology.Location, error) {
	switch {
	case d.Site != "" && d.Location != "":
		return topology.Location{}, &Refusal{event.ReasonInvalidRequest, "destination names both a site and a location"}
	case d.Site != "":
		if _, ok := t.Site(d.Site); !ok {
			return topology.Location{}, &Refusal{event.ReasonUnknownSite, fmt.Sprintf("no site %q in the topology", d.Site)}
		}
		procs := t.Processing(d.Site)
		if len(procs) == 0 {
			return topology.Location{}, &Refusal{event.ReasonNoProcessing, fmt.Sprintf("site %q has no active processing location", d.Site)}
		}
		return procs[0], nil
	case d.Location != "":
		l, ok := t.Location(d.Location)
		if !ok {
			return topology.Location{}, &Refusal{event.ReasonUnknownLocation, fmt.Sprintf("no location %q in the topology", d.Location)}
		}
		if l.Type != topology.TypeProcessing {
			return topology.Location{}, &Refusal{event.ReasonNotProcessing, fmt.Sprintf("location %q is a %s location, not processing", l.Name, l.Type)}
		}
		if !l.IsActive() {
			return topology.Location{}, &Refusal{event.ReasonInactiveLocation, fmt.Sprintf("location %q is inactive", l.Name)}
		}
		return l, nil
	default:
		return topology.Location{}, &Refusal{event.ReasonInvalidRequest, "destination names neither a site nor a location"}
	}
}

// Source picks the copy a package is staged from: copies at the
// destination's site first (no wide-area transfer), then by location
// priority (1 first), then by location name so the choice is deterministic
// and a re-plan after a crash picks the same copy. Copies at unknown or
// inactive locations, or at processing locations (staged copies come and
// go; they are not archives), are skipped. ok is false when no copy is usable.
func Source(t *topology.Topology, dest topology.Location, copies []Copy) (c Copy, at topology.Location, ok bool) {
	type cand struct {
		c Copy
		l topology.Location
	}
	var cands []cand
	for _, c := range copies {
		l, found := t.Location(c.Location)
		if !found || !l.IsActive() || l.Type == topology.TypeProcessing {
			continue
		}
		cands = append(cands, cand{c, l})
	}
	if len(cands) == 0 {
		return Copy{}, topology.Location{}, false
	}
	slices.SortStableFunc(cands, func(a, b cand) int {
		as, bs := a.l.Site == dest.Site, b.l.Site == dest.Site
		switch {
		case as && !bs:
			return -1
		case bs && !as:
			return 1
		case a.l.Priority != b.l.Priority:
			return a.l.Priority - b.l.Priority
		case a.l.Name < b.l.Name:
			return -1
		case a.l.Name > b.l.Name:
			return 1
		}
		return 0
	})
	return cands[0].c, cands[0].l, true
}

// NoSourceMessage explains, for the plan, why a package has no usable copy.
func NoSourceMessage(t *topology.Topology, copies []Copy) string {
	if len(copies) == 0 {
		return "the catalog has no copy of this package"
	}
	var why []string
	for _, c := range copies {
		l, found := t.Location(c.Location)
		switch {
		case !found:
			why = append(why, c.Location+" (unknown location)")
		case !l.IsActive():
			why = append(why, c.Location+" (inactive)")
		default:
			why = append(why, c.Location+" (a "+l.Type+" location)")
		}
	}
	return fmt.Sprintf("no usable copy: %v", why)
}
