// Package cli is stagectl: every subcommand, callable in-process by Run so
// the end-to-end tests drive the very code an operator runs.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/rs/zerolog"

	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/ccatobs/ccat-staging/shared/logx"
)

// Exit codes. They are part of stagectl's interface: scripts branch on them.
const (
	ExitOK        = 0 // success; for submit --wait and wait: the job completed
	ExitError     = 1 // the command could not do its work (NATS, ledger, files)
	ExitUsage     = 2 // bad flags or arguments
	ExitFailed    = 3 // submit --wait: the job ended failed (some packages failed)
	ExitRejected  = 4 // submit --wait: the planner refused the job
	ExitCancelled = 5 // submit --wait: the job was cancelled
	ExitTimeout   = 6 // submit --wait: --timeout passed before the job ended
	ExitDrift     = 7 // verify: staged copies differ from the ledger
	ExitNotFound  = 8 // status/explain/events: the ledger does not know the job
)

// exitError carries an exit code other than ExitError up to Run.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error { return &exitError{code: code, err: err} }

func usagef(format string, args ...any) error {
	return withCode(ExitUsage, fmt.Errorf(format, args...))
}

// silent is an outcome already reported on stdout: Run only sets the code.
type silent struct{ code int }

func (s silent) Error() string { return fmt.Sprintf("exit %d", s.code) }

// env is what every command gets from Run: the process's streams and
// environment, the resolved configuration and a logger on stderr.
type env struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	cfg    Config
	log    zerolog.Logger
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

func commands() []command {
	return []command{
		{"submit", "ask for packages to be staged; --wait follows the job", runSubmit},
		{"wait", "follow a job until it ends, like submit --wait", runWait},
		{"status", "show one job and its packages", runStatus},
		{"jobs", "list jobs (--status, --site, --limit)", runJobs},
		{"explain", "say in plain words where a job stands and why", runExplain},
		{"events", "a job's timeline: every event the ledger recorded for it", runEvents},
		{"sites", "sites with their live stagers, backlog and throughput", runSites},
		{"cancel", "ask that a job's remaining packages are not staged", runCancel},
		{"release", "say a job no longer needs its staged copies", runRelease},
		{"archive", "archive announce: describe a package tar and announce it", runArchive},
		{"verify", "re-hash staged copies at a location against the ledger", runVerify},
	}
}

// Run executes stagectl with args (args[0] is the program name) and returns
// the process exit code. It installs no signal handlers (main does), so
// tests can run several at once.
func Run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	err := run(ctx, args, getenv, stdin, stdout, stderr)
	if err == nil {
		return ExitOK
	}
	if s, ok := errors.AsType[silent](err); ok {
		return s.code
	}
	fmt.Fprintln(stderr, "stagectl:", err)
	if ee, ok := errors.AsType[*exitError](err); ok {
		return ee.code
	}
	return ExitError
}

func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	var g globals
	root := newFlagSet("stagectl", stderr)
	g.register(root)
	root.Usage = func() { usage(stderr, root) }
	if len(args) == 0 {
		args = []string{"stagectl"}
	}
	if err := root.Parse(args[1:]); err != nil {
		return parseErr(err)
	}
	rest := root.Args()
	if len(rest) == 0 {
		usage(stderr, root)
		return withCode(ExitUsage, errors.New("no command given"))
	}
	if rest[0] == "help" {
		usage(stdout, root)
		return nil
	}
	for _, c := range commands() {
		if c.name != rest[0] {
			continue
		}
		// Each command resolves the final configuration after parsing its own
		// flags, which may repeat the common ones given before its name.
		e := &env{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr, cfg: Config{flags: g}}
		// A CLI's stderr is for the person at it: warnings and up unless asked.
		e.log = logx.New(stderr, orDefault(getenv(config.LogLevel), "warn"), orDefault(getenv(config.LogFormat), "console"), "stagectl")
		return c.run(ctx, e, rest[1:])
	}
	usage(stderr, root)
	return usagef("unknown command %q", rest[0])
}

func usage(w io.Writer, root *flag.FlagSet) {
	fmt.Fprintln(w, "usage: stagectl [common flags] <command> [flags] [args]")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\ncommon flags (also accepted after the command):")
	out := root.Output()
	root.SetOutput(w)
	root.PrintDefaults()
	root.SetOutput(out)
	fmt.Fprintln(w, "\nexit codes: 0 ok, 1 error, 2 usage, 3 job failed, 4 job rejected, 5 job cancelled,")
	fmt.Fprintln(w, "            6 wait timed out, 7 verify found drift, 8 job not found")
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
