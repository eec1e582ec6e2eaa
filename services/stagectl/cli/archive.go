package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
	"github.com/ccatobs/ccat-staging/shared/topology"
)

// Announcement is what archive announce prints.
type Announcement struct {
	EventID   string `json:"event_id"`
	PackageID string `json:"package_id"`
	Location  string `json:"location"`
	Key       string `json:"key"`
	SizeBytes int64  `json:"size_bytes"`
	Checksum  string `json:"checksum"`
	Files     int    `json:"files"`
}

func runArchive(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] != "announce" {
		return usagef("usage: stagectl archive announce --location L --key K --file pkg.tar [--package-id ID]")
	}
	fs := newFlagSet("stagectl archive announce", e.stderr)
	loc := fs.String("location", "", "archive location that holds the copy")
	key := fs.String("key", "", "the copy's key (path) within the location")
	file := fs.String("file", "", "a local copy of the package tar, to describe")
	id := fs.String("package-id", "", "package id (default: the file name without .tar)")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: stagectl archive announce --location L --key K --file pkg.tar [--package-id ID]")
		fs.PrintDefaults()
	}
	pos, err := e.parse(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 0 || *loc == "" || *key == "" || *file == "" {
		return usagef("archive announce needs --location, --key and --file and no other arguments")
	}
	if e.cfg.TopologyFile != "" {
		// Catch a mistyped location here rather than as an unknown source
		// the planner silently never picks.
		t, err := topology.Load(e.cfg.TopologyFile)
		if err != nil {
			return err
		}
		if _, ok := t.Location(*loc); !ok {
			return usagef("location %q is not in %s", *loc, e.cfg.TopologyFile)
		}
	}
	pkg := *id
	if pkg == "" {
		pkg = strings.TrimSuffix(filepath.Base(*file), ".tar")
	}
	info, err := tarpkg.Describe(*file)
	if err != nil {
		return fmt.Errorf("describe %s: %w", *file, err)
	}
	d := event.PackageArchived{PackageID: pkg, Location: *loc, Key: *key, SizeBytes: info.SizeBytes,
		Checksum: info.Checksum, Format: "tar", Files: info.Files}
	ev, err := publish(ctx, e, subject.Archived, archivedID(*loc, pkg, info.Checksum), d)
	if err != nil {
		return err
	}
	a := Announcement{EventID: ev.ID, PackageID: pkg, Location: *loc, Key: *key, SizeBytes: info.SizeBytes, Checksum: info.Checksum, Files: len(info.Files)}
	if e.cfg.JSON {
		return writeJSON(e.stdout, a)
	}
	return table(e.stdout, [][]string{
		{"PACKAGE", "LOCATION", "KEY", "SIZE", "FILES", "CHECKSUM", "EVENT"},
		{a.PackageID, a.Location, a.Key, fmt.Sprint(a.SizeBytes), fmt.Sprint(a.Files), a.Checksum, a.EventID},
	})
}

// archivedID is archived:<location>:<package>:<first 16 hex of the sha256>:
// announcing the same bytes again is the same event, new bytes a new one.
func archivedID(loc, pkg, checksum string) string {
	hex := strings.TrimPrefix(checksum, "sha256:")
	return "archived:" + loc + ":" + pkg + ":" + hex[:min(16, len(hex))]
}
