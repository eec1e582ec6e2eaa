package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/ccatobs/ccat-staging/services/stagectl/audit"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/manifest"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"golang.org/x/sync/errgroup"
)

// VerifyReport is what verify prints.
type VerifyReport struct {
	Location string          `json:"location"`
	Root     string          `json:"root"`
	Packages int             `json:"packages"`
	Files    int             `json:"files"`
	Bytes    int64           `json:"bytes"`
	Drift    []audit.Finding `json:"drift"`
	// NoManifest lists staged packages whose announcement carried no file
	// manifest: only their presence was checked.
	NoManifest []string `json:"no_manifest,omitempty"`
	// Released lists packages that are gone from disk because no job holds
	// them any more (the ledger's staged copy is not "staged"): not drift.
	Released []string `json:"released,omitempty"`
}

func runVerify(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet("stagectl verify", e.stderr)
	loc := fs.String("location", "", "processing location to audit")
	root := fs.String("root", "", "its directory (default: its path in the topology file)")
	job := fs.String("job", "", "audit only this job's packages (and skip the untracked-directory check)")
	workers := fs.Int("workers", 2, "packages hashed in parallel")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: stagectl verify --location L [--root DIR] [--job ID] [--json]")
		fs.PrintDefaults()
	}
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 || *loc == "" {
		return usagef("verify needs --location and no other arguments")
	}
	if *workers < 1 {
		return usagef("--workers must be at least 1")
	}
	dir, err := locationRoot(e.cfg.TopologyFile, *loc, *root)
	if err != nil {
		return err
	}
	staged, err := stagedPackages(ctx, e.ledger(), *loc, *job)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, p := range staged {
		want[p] = true
	}
	nc, js, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	manifests, err := archivedManifests(ctx, js, want)
	if err != nil {
		return err
	}
	// Lists announced by reference are fetched (and verified) per package
	// as the workers reach it, so only a few are held at once.
	filesOf := func(m event.PackageArchived) []event.File {
		if m.Manifest == nil {
			return m.Files
		}
		obs, err := manifest.Open(ctx, js)
		if err == nil {
			var fs []event.File
			if fs, err = manifest.Fetch(ctx, obs, m.Checksum, *m.Manifest, ""); err == nil {
				return fs
			}
		}
		fmt.Fprintf(e.stderr, "stagectl: %s: manifest by reference not usable: %v\n", m.PackageID, err)
		return nil
	}
	rep := VerifyReport{Location: *loc, Root: dir, Packages: len(staged), Drift: []audit.Finding{}}
	var mu sync.Mutex
	// A package's findings are the report, not an error: no hash stops the
	// others. Cancelling stops starting packages; those being hashed finish.
	var g errgroup.Group
	g.SetLimit(*workers)
	for _, p := range staged {
		if ctx.Err() != nil {
			break
		}
		g.Go(func() error {
			if ctx.Err() != nil {
				return nil // cancelled while waiting for a worker: not started
			}
			m, ok := manifests[p]
			files := filesOf(m)
			r := audit.Package(p, filepath.Join(dir, p), files)
			present := !missing(r.Findings)
			if present && *job == "" {
				// On disk: the ledger must not call the copy deleted.
				if st := copyStatus(ctx, e.ledger(), p, *loc); st == "deleted" {
					r.Findings = append(r.Findings, audit.Finding{PackageID: p, Kind: audit.DeletedPresent,
						Detail: "the ledger records this copy deleted, yet it is on disk"})
				}
			}
			perms, hasPerms := stagedPerms(dir, p)
			var modes []audit.Finding
			if hasPerms && present {
				modes = audit.Modes(p, filepath.Join(dir, p), perms)
			}
			mu.Lock()
			rep.Drift = append(rep.Drift, modes...)
			rep.Files += r.Files
			rep.Bytes += r.Bytes
			if ok && len(files) > 0 {
				rep.Drift = append(rep.Drift, r.Findings...)
			} else {
				// Without a manifest every file would read as extra.
				rep.NoManifest = append(rep.NoManifest, p)
				for _, f := range r.Findings {
					if f.Kind == audit.MissingPackage || f.Kind == audit.DeletedPresent {
						rep.Drift = append(rep.Drift, f)
					}
				}
			}
			mu.Unlock()
			return nil
		})
	}
	_ = g.Wait() // every function returns nil
	if ctx.Err() != nil {
		return ctx.Err()
	}
	rep.Drift, rep.Released = dropReleased(ctx, e.ledger(), *loc, rep.Drift)
	if *job == "" {
		untracked, err := untrackedDirs(dir, want)
		if err != nil {
			return err
		}
		rep.Drift = append(rep.Drift, untracked...)
	}
	sort.Slice(rep.Drift, func(i, j int) bool {
		a, b := rep.Drift[i], rep.Drift[j]
		return a.PackageID < b.PackageID || a.PackageID == b.PackageID && a.Path < b.Path
	})
	sort.Strings(rep.NoManifest)
	if err := printVerify(e, rep); err != nil {
		return err
	}
	if len(rep.Drift) > 0 {
		return silent{code: ExitDrift}
	}
	return nil
}

func printVerify(e *env, rep VerifyReport) error {
	for _, p := range rep.NoManifest {
		fmt.Fprintf(e.stderr, "stagectl: package %s: its announcement has no file manifest; only its presence was checked\n", p)
	}
	if e.cfg.JSON {
		return writeJSON(e.stdout, rep)
	}
	if len(rep.Drift) > 0 {
		rows := [][]string{{"PACKAGE", "PATH", "KIND", "DETAIL"}}
		for _, f := range rep.Drift {
			rows = append(rows, []string{f.PackageID, dash(f.Path), f.Kind, oneLine(f.Detail, 160)})
		}
		if err := table(e.stdout, rows); err != nil {
			return err
		}
	}
	verdict := "no drift"
	if n := len(rep.Drift); n > 0 {
		verdict = fmt.Sprintf("%d difference(s)", n)
	}
	if n := len(rep.Released); n > 0 {
		verdict += fmt.Sprintf("; %d released package(s) already removed", n)
	}
	_, err := fmt.Fprintf(e.stdout, "verified %d package(s), %d file(s), %s at %s (%s): %s\n",
		rep.Packages, rep.Files, humanBytes(rep.Bytes), rep.Location, rep.Root, verdict)
	return err
}

// locationRoot finds the directory to audit: --root, else the location's
// path in the topology file.
func locationRoot(topoFile, loc, root string) (string, error) {
	if root != "" {
		return root, nil
	}
	if topoFile == "" {
		return "", usagef("give --root, or a topology file (--topology or $TOPOLOGY_FILE) that has location %q", loc)
	}
	t, err := topology.Load(topoFile)
	if err != nil {
		return "", err
	}
	l, ok := t.Location(loc)
	if !ok {
		return "", usagef("location %q is not in %s", loc, topoFile)
	}
	if l.Type != topology.TypeProcessing || l.Path == "" {
		return "", usagef("location %q is not a processing location on disk", loc)
	}
	return l.Path, nil
}

// stagedPackages asks the ledger which packages are completed at loc: those
// of one job, or of every job.
func stagedPackages(ctx context.Context, api *ledgerapi.Client, loc, job string) ([]string, error) {
	var ids []string
	if job != "" {
		ids = []string{job}
	} else {
		jobs, err := listJobs(ctx, api, "", "", loc, 1<<30)
		if err != nil {
			return nil, err
		}
		for _, j := range jobs {
			// A list answer may leave the location out; fetch those to see.
			if j.Counts.Completed > 0 && (j.Destination.Location == "" || j.Destination.Location == loc) {
				ids = append(ids, j.JobID)
			}
		}
	}
	seen := map[string]bool{}
	var out []string
	for _, id := range ids {
		j, err := api.Job(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("job %s: %w", id, err)
		}
		for _, p := range j.Packages {
			at := j.Destination.Location
			if p.Destination.Location != "" {
				at = p.Destination.Location
			}
			if p.Status == event.StatusCompleted && at == loc && !seen[p.PackageID] {
				seen[p.PackageID] = true
				out = append(out, p.PackageID)
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// untrackedDirs lists top-level entries of root the ledger has no completed
// package for. Hidden entries are the stager's bookkeeping and temp dirs.
func untrackedDirs(root string, known map[string]bool) ([]audit.Finding, error) {
	des, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", root, err)
	}
	var out []audit.Finding
	for _, de := range des {
		if strings.HasPrefix(de.Name(), ".") || known[de.Name()] {
			continue
		}
		out = append(out, audit.Finding{PackageID: de.Name(), Kind: audit.UntrackedPackage, Detail: "the ledger has no completed package " + de.Name() + " here"})
	}
	return out, nil
}

// copyStatus is the ledger's status of the package's staged copy at loc
// ("" when it has none or cannot say).
func copyStatus(ctx context.Context, api *ledgerapi.Client, pkg, loc string) string {
	var p ledgerapi.PackageInfo
	if err := api.Get(ctx, "/v1/packages/"+url.PathEscape(pkg), &p); err != nil {
		return ""
	}
	for _, c := range p.StagedCopies {
		if c.Location == loc {
			return c.Status
		}
	}
	return ""
}

// dropReleased takes missing packages out of the drift when the ledger says
// their copy at loc is no longer held by any job (deletion_scheduled,
// deleted): the retention sweep removing them is expected. Only missing
// packages are looked up, so an intact location costs no extra requests.
func dropReleased(ctx context.Context, api *ledgerapi.Client, loc string, drift []audit.Finding) ([]audit.Finding, []string) {
	var kept []audit.Finding
	var released []string
	for _, f := range drift {
		if f.Kind != audit.MissingPackage {
			kept = append(kept, f)
			continue
		}
		var p ledgerapi.PackageInfo
		gone := false
		if err := api.Get(ctx, "/v1/packages/"+url.PathEscape(f.PackageID), &p); err == nil {
			for _, c := range p.StagedCopies {
				gone = gone || (c.Location == loc && c.Status != "staged")
			}
		}
		if gone {
			released = append(released, f.PackageID)
		} else {
			kept = append(kept, f)
		}
	}
	if kept == nil {
		kept = []audit.Finding{}
	}
	return kept, released
}

func missing(fs []audit.Finding) bool {
	for _, f := range fs {
		if f.Kind == audit.MissingPackage {
			return true
		}
	}
	return false
}

// stagedPerms reads the modes and group the stager recorded giving pkg, from
// its verification record (<root>/.ccat-staging/manifests/<pkg>.json). A
// copy staged before the stager recorded them, or without a record, has
// nothing to compare against.
func stagedPerms(root, pkg string) (audit.Perms, bool) {
	f, err := os.Open(filepath.Join(root, ".ccat-staging", "manifests", pkg+".json"))
	if err != nil {
		return audit.Perms{}, false
	}
	defer f.Close()
	var rec struct {
		DirMode  string `json:"dir_mode"`
		FileMode string `json:"file_mode"`
		GID      *int   `json:"gid"`
	}
	if err := json.NewDecoder(f).Decode(&rec); err != nil || rec.DirMode == "" || rec.FileMode == "" || rec.GID == nil {
		return audit.Perms{}, false
	}
	d, err1 := topology.ParseMode(rec.DirMode)
	fm, err2 := topology.ParseMode(rec.FileMode)
	if err1 != nil || err2 != nil {
		return audit.Perms{}, false
	}
	return audit.Perms{DirMode: d, FileMode: fm, GID: *rec.GID}, true
}
