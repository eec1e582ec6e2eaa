package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/ccatobs/ccat-staging/shared/tarpkg"
)

// demoPackage is one package of the demo archive and where its copies are.
type demoPackage struct {
	id        string
	info      tarpkg.Info
	locations []string // archive locations holding a copy
	keys      []string // its key at each location
}

const topologyYAML = `# Written by the demo: two sites, each with a disk archive and a processing area.
sites:
  - name: cologne
    locations:
      - name: cologne-lta
        type: long_term_archive
        storage: disk
        priority: 1
        path: %[1]s/cologne/lta
      - name: cologne-processing
        type: processing
        storage: disk
        priority: 1
        path: %[1]s/cologne/processing
  - name: us
    locations:
      - name: us-lta
        type: long_term_archive
        storage: disk
        priority: 1
        path: %[1]s/us/lta
      - name: us-processing
        type: processing
        storage: disk
        priority: 1
        path: %[1]s/us/processing
`

// makeArchive writes the topology and n tar packages of about size bytes:
// even packages are archived in Cologne, odd ones in the US, and every third
// one at both, so each job stages some packages from its own site and some
// from across the ocean.
func makeArchive(dir string, n int, size int64) (topology string, pkgs []demoPackage, err error) {
	for _, d := range []string{"cologne/lta", "cologne/processing", "us/lta", "us/processing"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return "", nil, err
		}
	}
	topology = filepath.Join(dir, "topology.yaml")
	if err := os.WriteFile(topology, fmt.Appendf(nil, topologyYAML, dir), 0o644); err != nil {
		return "", nil, err
	}
	for i := range n {
		id := fmt.Sprintf("obs-2026-%04d-primecam-m%d", 100+i, i%3+1)
		key := fmt.Sprintf("raw/2026/%s.tar", id)
		var locs []string
		switch {
		case i%3 == 0:
			locs = []string{"cologne-lta", "us-lta"}
		case i%2 == 0:
			locs = []string{"cologne-lta"}
		default:
			locs = []string{"us-lta"}
		}
		entries := tarpkg.Tree(uint64(i+1), 12, size)
		p := demoPackage{id: id}
		for _, loc := range locs {
			site := "cologne"
			if loc == "us-lta" {
				site = "us"
			}
			dst := filepath.Join(dir, site, "lta", filepath.FromSlash(key))
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return "", nil, err
			}
			if p.info, err = tarpkg.Write(dst, entries); err != nil {
				return "", nil, err
			}
			p.locations = append(p.locations, loc)
			p.keys = append(p.keys, key)
		}
		pkgs = append(pkgs, p)
	}
	return topology, pkgs, nil
}
