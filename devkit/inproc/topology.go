package inproc

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/ccatobs/ccat-staging/shared/topology"
)

// TestTopology is the system tests' topology, a template whose %[1]s is the
// test's base directory: sites cologne and us, each with a disk archive
// <site>-lta (<base>/<site>/lta) and a processing location
// <site>-processing (<base>/<site>/processing); cologne also has
// cologne-old (<base>/cologne/old), a processing location of lower priority
// that a job for the site must not land in.
const TestTopology = `sites:
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
      - name: cologne-old
        type: processing
        storage: disk
        priority: 2
        path: %[1]s/cologne/old
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

// WriteTopology fills template's %[1]s with base, checks the result parses
// as a topology, creates every disk location's directory and writes it to
// base/topology.yaml, whose path it returns (the services' TOPOLOGY_FILE).
// Tests that need other locations pass their own template.
func WriteTopology(base, template string) (string, error) {
	yaml := fmt.Sprintf(template, base)
	topo, err := topology.Parse([]byte(yaml))
	if err != nil {
		return "", fmt.Errorf("topology: %w", err)
	}
	for _, site := range topo.Sites {
		for _, l := range site.Locations {
			if l.Path != "" {
				if err := os.MkdirAll(l.Path, 0o755); err != nil {
					return "", err
				}
			}
		}
	}
	path := filepath.Join(base, "topology.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		return "", err
	}
	return path, nil
}
