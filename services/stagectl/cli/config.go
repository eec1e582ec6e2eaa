package cli

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/ccatobs/ccat-staging/shared/config"
)

// Environment variables (and config file keys) stagectl reads besides the
// common ones in shared/config.
const (
	EnvLedgerURL   = "LEDGER_URL"
	EnvLedgerToken = "LEDGER_TOKEN"
	EnvConfig      = "STAGECTL_CONFIG"
)

// Defaults.
const (
	DefaultNATSURL   = "nats://127.0.0.1:4222"
	DefaultLedgerURL = "http://127.0.0.1:8080"
)

// Config is what a command works with, resolved in this order: flags, then
// the environment, then the config file, then the defaults.
type Config struct {
	NATSURL      string
	LedgerURL    string
	LedgerToken  string
	TopologyFile string
	JSON         bool
	// User is the requested_by of published events: $USER unless a command's
	// --requested-by says otherwise.
	User string

	flags globals
}

// globals are the flags every command accepts, before or after its name.
type globals struct {
	config, natsURL, ledgerURL, ledgerToken, topology string
	json                                              bool
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.config, "config", g.config, "config file (default $"+EnvConfig+" or ~/.config/ccat-staging/stagectl.yaml)")
	fs.StringVar(&g.natsURL, "nats-url", g.natsURL, "NATS server URL (default $"+config.NATSURL+" or "+DefaultNATSURL+")")
	fs.StringVar(&g.ledgerURL, "ledger-url", g.ledgerURL, "ledger API base URL (default $"+EnvLedgerURL+" or "+DefaultLedgerURL+")")
	fs.StringVar(&g.ledgerToken, "ledger-token", g.ledgerToken, "ledger API bearer token (default $"+EnvLedgerToken+")")
	fs.StringVar(&g.topology, "topology", g.topology, "topology file (default $"+config.Topology+")")
	fs.BoolVar(&g.json, "json", g.json, "print results as JSON for scripts")
}

// configKeys are the keys a config file may set: the environment's names, so
// one vocabulary serves env files, systemd units and stagectl.yaml.
var configKeys = []string{config.NATSURL, EnvLedgerURL, EnvLedgerToken, config.Topology}

// resolve computes the Config from the parsed flags g, getenv and the file.
func resolve(g globals, getenv func(string) string) (Config, error) {
	file, err := loadFile(g.config, getenv)
	if err != nil {
		return Config{}, err
	}
	pick := func(flagVal, name, def string) string {
		switch {
		case flagVal != "":
			return flagVal
		case getenv(name) != "":
			return getenv(name)
		case file[name] != "":
			return file[name]
		}
		return def
	}
	c := Config{
		NATSURL:      pick(g.natsURL, config.NATSURL, DefaultNATSURL),
		LedgerURL:    pick(g.ledgerURL, EnvLedgerURL, DefaultLedgerURL),
		LedgerToken:  pick(g.ledgerToken, EnvLedgerToken, ""),
		TopologyFile: pick(g.topology, config.Topology, ""),
		JSON:         g.json,
		User:         orDefault(getenv("USER"), "unknown"),
		flags:        g,
	}
	return c, nil
}

// loadFile reads the config file named by --config or $STAGECTL_CONFIG (which
// must exist) or the per-user default (which may be absent).
func loadFile(explicit string, getenv func(string) string) (map[string]string, error) {
	path := orDefault(explicit, getenv(EnvConfig))
	mustExist := path != ""
	if path == "" {
		dir := getenv("XDG_CONFIG_HOME")
		if dir == "" && getenv("HOME") != "" {
			dir = filepath.Join(getenv("HOME"), ".config")
		}
		if dir == "" {
			return nil, nil
		}
		path = filepath.Join(dir, "ccat-staging", "stagectl.yaml")
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !mustExist {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	return parseFile(path, b)
}

func parseFile(path string, b []byte) (map[string]string, error) {
	out := map[string]string{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&out); err != nil && !errors.Is(err, io.EOF) {
		return nil, usagef("config file %s: %v", path, err)
	}
	for k := range out {
		known := false
		for _, want := range configKeys {
			known = known || k == want
		}
		if !known {
			// A typo must not silently leave a setting at its default.
			return nil, usagef("config file %s: unknown key %q (known: %s)", path, k, strings.Join(configKeys, ", "))
		}
	}
	return out, nil
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses a command's flags, which may come before, between or after
// its positional arguments (the flag package alone stops at the first
// positional one), then resolves the configuration.
func (e *env) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	g := e.cfg.flags
	g.register(fs)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, parseErr(err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		// After an explicit "--" everything is positional.
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	cfg, err := resolve(g, e.getenv)
	if err != nil {
		return nil, err
	}
	e.cfg = cfg
	return pos, nil
}

func parseErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return silent{code: ExitOK}
	}
	// The flag package has already printed the problem and the usage.
	return silent{code: ExitUsage}
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}
