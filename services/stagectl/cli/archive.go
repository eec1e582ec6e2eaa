package cli

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/manifest"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
	// Manifest is how the file list travelled: "inline" in the event, or
	// "reference" (stored in the MANIFESTS object store, the event carrying
	// its digest and size).
	Manifest string `json:"manifest"`
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
	nc, js, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	ev, form, err := announce(ctx, js, nc.MaxPayload(), archivedID(*loc, pkg, info.Checksum), d)
	if err != nil {
		return err
	}
	a := Announcement{EventID: ev.ID, PackageID: pkg, Location: *loc, Key: *key, SizeBytes: info.SizeBytes, Checksum: info.Checksum,
		Files: len(info.Files), Manifest: form}
	if e.cfg.JSON {
		return writeJSON(e.stdout, a)
	}
	return table(e.stdout, [][]string{
		{"PACKAGE", "LOCATION", "KEY", "SIZE", "FILES", "MANIFEST", "CHECKSUM", "EVENT"},
		{a.PackageID, a.Location, a.Key, fmt.Sprint(a.SizeBytes), fmt.Sprint(a.Files), a.Manifest, a.Checksum, a.EventID},
	})
}

// announce publishes d, choosing how its file list travels: inline when the
// list is within manifest.InlineLimit of the server's max payload (the
// planner copies it into its catalog and every request, so "fits one
// message" is not enough), otherwise stored in MANIFESTS with the event
// carrying the reference. A list that fits neither form, and an event that
// still exceeds the max payload, fail here with a message that says so,
// never as the server's bare "maximum payload exceeded".
func announce(ctx context.Context, js jetstream.JetStream, maxPayload int64, id string, d event.PackageArchived) (event.Envelope, string, error) {
	if n := len(d.Files); n > manifest.MaxEntries {
		return event.Envelope{}, "", fmt.Errorf("package %s has %d files: a file manifest holds at most %d, inline or by reference, so it cannot be announced",
			d.PackageID, n, manifest.MaxEntries)
	}
	form := "inline"
	if manifest.EncodedSize(d.Files) > manifest.InlineLimit(maxPayload) {
		obs, err := manifest.Open(ctx, js)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return event.Envelope{}, "", fmt.Errorf("%w (the file list of %s needs the object store %s: are the services provisioned?)", err, d.PackageID, subject.ManifestsBucket)
		}
		if err != nil {
			return event.Envelope{}, "", err
		}
		ref, err := manifest.Store(ctx, obs, d.Checksum, d.Files, "")
		if errors.Is(err, manifest.ErrTooLarge) {
			return event.Envelope{}, "", fmt.Errorf("package %s cannot be announced: %w", d.PackageID, err)
		}
		if err != nil {
			return event.Envelope{}, "", err
		}
		d.Files, d.Manifest, form = nil, &ref, "reference"
	}
	ev, err := event.New(Source, id, "", d)
	if err != nil {
		return ev, "", err
	}
	if err := event.ValidateData(ev.Type, ev.Data); err != nil {
		return ev, "", withCode(ExitUsage, err)
	}
	m, err := bus.Msg(subject.Archived, ev)
	if err != nil {
		return ev, "", err
	}
	if n := int64(len(m.Data)); n > maxPayload {
		return ev, "", fmt.Errorf("the announcement of %s is %d bytes with its file list by %s, over the server's max payload of %d", d.PackageID, n, form, maxPayload)
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(pctx, m); err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
			return ev, "", fmt.Errorf("publish %s: %w (no stream takes %s: are the services provisioned?)", ev.ID, err, subject.Archived)
		}
		return ev, "", fmt.Errorf("publish %s: %w", ev.ID, err)
	}
	return ev, form, nil
}

// archivedID is archived:<location>:<package>:<first 16 hex of the sha256>:
// announcing the same bytes again is the same event, new bytes a new one.
func archivedID(loc, pkg, checksum string) string {
	hex := strings.TrimPrefix(checksum, "sha256:")
	return "archived:" + loc + ":" + pkg + ":" + hex[:min(16, len(hex))]
}
