// Package topology describes where data can live: sites and their storage
// locations, read from a YAML file that every service shares. Locations are
// named by operators and used as NATS subject tokens, so names are checked
// strictly.
package topology

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Location types, as in CCAT's ops-db.
const (
	TypeLongTermArchive = "long_term_archive"
	TypeProcessing      = "processing"
	TypeBuffer          = "buffer"
	TypeSource          = "source"
)

// Storage kinds.
const (
	StorageDisk = "disk"
	StorageS3   = "s3"
	StorageTape = "tape"
)

// Topology is the whole file.
type Topology struct {
	Sites []Site `yaml:"sites"`
}

// Site groups the locations of one data centre.
type Site struct {
	Name      string     `yaml:"name"`
	Locations []Location `yaml:"locations"`
}

// Location is one storage area.
type Location struct {
	Name    string `yaml:"name"`
	Site    string `yaml:"-"` // filled from the enclosing site
	Type    string `yaml:"type"`
	Storage string `yaml:"storage"`
	// Priority orders locations of the same kind: 1 is used first.
	Priority int `yaml:"priority"`
	// Active defaults to true; an inactive location is never chosen.
	Active *bool `yaml:"active"`
	// Path is the root directory of a disk (or tape-cache) location. Nothing
	// is ever read or written outside it.
	Path string `yaml:"path"`
	// S3 configures an s3 location. Credentials never live here: see the
	// stager's documentation.
	S3 *S3 `yaml:"s3,omitempty"`
	// Recall is the command that brings a tape (or HSM) file online before it
	// is read from Path; the key's absolute path is its last argument.
	Recall *Recall `yaml:"recall,omitempty"`
	// Retention is how long a staged copy is kept at a processing location
	// after its jobs released it or ended; absent means the default (7
	// days), an explicit 0s deletes as soon as no job holds the copy. Use
	// KeepFor, which knows the difference.
	Retention time.Duration `yaml:"retention,omitempty"`
	// RetentionSet records that the file set retention explicitly.
	RetentionSet bool `yaml:"-"`
	// DirMode, FileMode and Group are what a processing location grants on
	// the packages staged there: the modes are octal as chmod reads them
	// ("2750", quoted or not), absent means 2750 for directories and 0640
	// for files; Group is a group name or a numeric gid, absent means the
	// group the file system gives (the stager's, or the root's when the
	// root has the setgid bit). The stager resolves the group at start-up.
	DirMode  Mode   `yaml:"dir_mode,omitempty"`
	FileMode Mode   `yaml:"file_mode,omitempty"`
	Group    string `yaml:"group,omitempty"`
	// Sync is how the stager makes a package durable at a processing
	// location before putting it in place: "file" (the default: fsync of
	// every file and directory it wrote, waiting only for the package's
	// own pages) or "filesystem" (no per-file fsync, one syncfs(2) of the
	// location's file system at the end: faster for packages of many
	// files, but it also waits for everything else dirty on that file
	// system, so meant for a file system the stager has mostly to itself).
	Sync string `yaml:"sync,omitempty"`
}

// The values of Location.Sync.
const (
	SyncFile       = "file"
	SyncFilesystem = "filesystem"
)

// Mode is a permission mode written in octal; 0 means unset. Directories
// may carry the setgid bit (fs.ModeSetgid), nothing may carry setuid or
// sticky.
type Mode fs.FileMode

// UnmarshalYAML reads the scalar's text as octal, so that dir_mode: 2750
// means what chmod 2750 means (YAML would read the bare number as decimal).
func (m *Mode) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a mode is an octal number such as 2750", n.Line)
	}
	fm, err := ParseMode(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*m = Mode(fm)
	return nil
}

// ParseMode reads a mode written in octal as chmod(1) reads it ("2750",
// also "0o2750"), with its setuid, setgid and sticky bits. The topology,
// the stager's verification record and stagectl verify all write modes
// this way (Octal).
func ParseMode(s string) (fs.FileMode, error) {
	v := strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O")
	u, err := strconv.ParseUint(v, 8, 32)
	if err != nil || u > 0o7777 {
		return 0, fmt.Errorf("mode %q is not an octal mode such as 2750", s)
	}
	fm := fs.FileMode(u & 0o777)
	if u&0o4000 != 0 {
		fm |= fs.ModeSetuid
	}
	if u&0o2000 != 0 {
		fm |= fs.ModeSetgid
	}
	if u&0o1000 != 0 {
		fm |= fs.ModeSticky
	}
	return fm, nil
}

// Octal writes m as chmod(1) reads it, ParseMode's inverse: "2750".
func Octal(m fs.FileMode) string {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return fmt.Sprintf("%04o", u)
}

// Mode returns m as an fs.FileMode.
func (m Mode) Mode() fs.FileMode { return fs.FileMode(m) }

// DefaultRetention is the retention of a processing location whose entry
// sets none.
const DefaultRetention = 7 * 24 * time.Hour

// KeepFor is how long a staged copy nobody references stays at l.
func (l Location) KeepFor() time.Duration {
	if !l.RetentionSet && l.Retention == 0 {
		return DefaultRetention
	}
	return max(l.Retention, 0)
}

// S3 is an S3-compatible bucket.
type S3 struct {
	Endpoint string `yaml:"endpoint"` // host:port, no scheme
	Bucket   string `yaml:"bucket"`
	Region   string `yaml:"region"`
	Prefix   string `yaml:"prefix"`
	TLS      bool   `yaml:"tls"`
	// CredentialsFile names a file with access_key_id and secret_access_key;
	// empty means the environment (see the stager's docs).
	CredentialsFile string `yaml:"credentials_file"`
	// Parts is how many ranged GETs of one object the stager keeps in
	// flight, and PartSize the bytes each asks for; a package's read buffers
	// are bounded by Parts × PartSize. Zero means the stager's defaults (4 ×
	// 8 MiB); a long, fat link wants more parts (see the stager README).
	Parts    int   `yaml:"parts,omitempty"`
	PartSize int64 `yaml:"part_size,omitempty"`
}

// Recall runs an external command to bring a file online.
type Recall struct {
	Command []string      `yaml:"command"`
	Timeout time.Duration `yaml:"timeout"`
}

// IsActive reports whether the location may be chosen.
func (l Location) IsActive() bool { return l.Active == nil || *l.Active }

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidName reports whether s can name a site or location (it becomes a NATS
// subject token and a path element).
func ValidName(s string) bool { return nameRE.MatchString(s) }

// Load reads and checks a topology file.
func Load(path string) (*Topology, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read topology: %w", err)
	}
	t, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("topology %s: %w", path, err)
	}
	return t, nil
}

// Parse decodes and checks a topology document. Unknown keys are errors, so
// a typo cannot silently leave a setting at its default.
func Parse(b []byte) (*Topology, error) {
	var t Topology
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if err := t.markRetention(b); err != nil {
		return nil, err
	}
	if err := t.check(); err != nil {
		return nil, err
	}
	return &t, nil
}

// markRetention sets RetentionSet on every location whose entry names a
// retention: a time.Duration cannot tell "0s" from absent.
func (t *Topology) markRetention(b []byte) error {
	var raw struct {
		Sites []struct {
			Locations []map[string]any `yaml:"locations"`
		} `yaml:"sites"`
	}
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("parse: %w", err)
	}
	for si := range min(len(raw.Sites), len(t.Sites)) {
		for li := range min(len(raw.Sites[si].Locations), len(t.Sites[si].Locations)) {
			_, ok := raw.Sites[si].Locations[li]["retention"]
			t.Sites[si].Locations[li].RetentionSet = ok
		}
	}
	return nil
}

func (t *Topology) check() error {
	var errs []error
	if len(t.Sites) == 0 {
		errs = append(errs, errors.New("no sites"))
	}
	seenSite := map[string]bool{}
	seenLoc := map[string]bool{}
	for si := range t.Sites {
		s := &t.Sites[si]
		if !ValidName(s.Name) {
			errs = append(errs, fmt.Errorf("site name %q: want lower-case letters, digits, '-' or '_'", s.Name))
		}
		if seenSite[s.Name] {
			errs = append(errs, fmt.Errorf("site %q defined twice", s.Name))
		}
		seenSite[s.Name] = true
		for li := range s.Locations {
			l := &s.Locations[li]
			l.Site = s.Name
			where := fmt.Sprintf("location %q of site %q", l.Name, s.Name)
			if !ValidName(l.Name) {
				errs = append(errs, fmt.Errorf("%s: name must be lower-case letters, digits, '-' or '_'", where))
			}
			if seenLoc[l.Name] {
				errs = append(errs, fmt.Errorf("%s: location names must be unique across sites", where))
			}
			seenLoc[l.Name] = true
			if !slices.Contains([]string{TypeLongTermArchive, TypeProcessing, TypeBuffer, TypeSource}, l.Type) {
				errs = append(errs, fmt.Errorf("%s: unknown type %q", where, l.Type))
			}
			switch l.Storage {
			case StorageDisk, StorageTape:
				if l.Path == "" || !filepath.IsAbs(l.Path) {
					errs = append(errs, fmt.Errorf("%s: %s storage needs an absolute path", where, l.Storage))
				}
			case StorageS3:
				if l.S3 == nil || l.S3.Endpoint == "" || l.S3.Bucket == "" {
					errs = append(errs, fmt.Errorf("%s: s3 storage needs s3.endpoint and s3.bucket", where))
				}
			default:
				errs = append(errs, fmt.Errorf("%s: unknown storage %q", where, l.Storage))
			}
			if l.Type == TypeProcessing && l.Storage != StorageDisk {
				errs = append(errs, fmt.Errorf("%s: a processing location must be disk storage", where))
			}
			if l.Priority < 0 {
				errs = append(errs, fmt.Errorf("%s: negative priority", where))
			}
			errs = append(errs, l.checkPerms(where)...)
		}
	}
	return errors.Join(errs...)
}

// checkPerms refuses modes that would lock the stager out of its own
// copies (it must read, write and traverse as owner) or that an archive
// could abuse (setuid, sticky, setgid on files).
func (l *Location) checkPerms(where string) []error {
	var errs []error
	if (l.DirMode != 0 || l.FileMode != 0 || l.Group != "") && l.Type != TypeProcessing {
		errs = append(errs, fmt.Errorf("%s: dir_mode, file_mode and group apply to processing locations only", where))
	}
	switch l.Sync {
	case "", SyncFile, SyncFilesystem:
		if l.Sync != "" && l.Type != TypeProcessing {
			errs = append(errs, fmt.Errorf("%s: sync applies to processing locations only", where))
		}
	default:
		errs = append(errs, fmt.Errorf("%s: sync %q: want %s or %s", where, l.Sync, SyncFile, SyncFilesystem))
	}
	if d := l.DirMode.Mode(); d != 0 {
		if d&^(fs.ModePerm|fs.ModeSetgid) != 0 {
			errs = append(errs, fmt.Errorf("%s: dir_mode may not set setuid or sticky", where))
		}
		if d&0o700 != 0o700 {
			errs = append(errs, fmt.Errorf("%s: dir_mode must give the owner (the stager) rwx", where))
		}
	}
	if f := l.FileMode.Mode(); f != 0 {
		if f&^fs.ModePerm != 0 {
			errs = append(errs, fmt.Errorf("%s: file_mode may not set setuid, setgid or sticky", where))
		}
		if f&0o600 != 0o600 {
			errs = append(errs, fmt.Errorf("%s: file_mode must give the owner (the stager) rw", where))
		}
	}
	return errs
}

// Site returns the named site.
func (t *Topology) Site(name string) (Site, bool) {
	for _, s := range t.Sites {
		if s.Name == name {
			return s, true
		}
	}
	return Site{}, false
}

// Location returns the named location.
func (t *Topology) Location(name string) (Location, bool) {
	for _, s := range t.Sites {
		for _, l := range s.Locations {
			if l.Name == name {
				return l, true
			}
		}
	}
	return Location{}, false
}

// Processing returns the active processing locations of a site, first
// choice first (lowest priority number, then name).
func (t *Topology) Processing(site string) []Location {
	s, ok := t.Site(site)
	if !ok {
		return nil
	}
	var out []Location
	for _, l := range s.Locations {
		if l.Type == TypeProcessing && l.IsActive() {
			out = append(out, l)
		}
	}
	SortByPriority(out)
	return out
}

// SortByPriority orders locations first choice first.
func SortByPriority(ls []Location) {
	slices.SortStableFunc(ls, func(a, b Location) int {
		if a.Priority != b.Priority {
			return a.Priority - b.Priority
		}
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
}

// SiteNames lists the sites in file order.
func (t *Topology) SiteNames() []string {
	out := make([]string, 0, len(t.Sites))
	for _, s := range t.Sites {
		out = append(out, s.Name)
	}
	return out
}
