// Command karapace builds deterministic, content-addressed, rootless
// development environments from a karapace.toml manifest.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
)

const version = "0.1.0"

// flagDef describes one command-line flag. A flag with an empty arg is a
// switch; otherwise it takes a value named arg in help texts.
type flagDef struct {
	long, short string
	arg         string
	help        string
}

// command is one row of the table that drives dispatch, --help,
// completions and man pages alike.
type command struct {
	name     string
	synopsis string // positional arguments as shown in help
	summary  string // one line
	help     string // paragraphs for --help and the man page
	flags    []flagDef
	minArgs  int
	maxArgs  int    // -1: no limit
	dash     int    // whether a command follows "--": noDash, optionalDash, requiredDash
	complete string // what positional arguments complete to: env, file, dir, shell, template
	run      func(*cli) error
}

const (
	noDash = iota
	optionalDash
	requiredDash
)

var globalFlags = []flagDef{
	{"store", "", "PATH", "store root (default: $KARAPACE_STORE, else $XDG_DATA_HOME/karapace)"},
	{"json", "", "", "print one JSON document on stdout; errors as JSON on stderr"},
	{"verbose", "v", "", "say more on stderr"},
	{"trace", "", "", "say everything on stderr"},
	{"help", "h", "", "show help"},
}

// commands is filled in init so that run functions may refer to the
// table (help, completions) without an initialization cycle.
var commands []*command

func findCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// cli is what a command's run function receives.
type cli struct {
	stdin          *os.File
	stdout, stderr io.Writer
	getenv         func(string) string
	out            *output // messages and progress, on stderr

	storeFlag string
	json      bool
	cmd       *command
	opts      map[string]string // command flags given, by long name
	args      []string          // positional arguments
	rest      []string          // the command after "--"
}

func (c *cli) flag(name string) string { return c.opts[name] }
func (c *cli) has(name string) bool    { _, ok := c.opts[name]; return ok }

func main() {
	runStageIfChild()
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}

// run is the whole program behind main, so tests can drive it in-process.
func run(argv []string, stdin *os.File, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv, opts: map[string]string{}}
	global, err := c.parse(argv)
	c.out = newOutput(getenv("KARAPACE_LOG"), global["verbose"], global["trace"], stderr)
	if err != nil {
		return c.fail(err)
	}
	if global["version"] {
		fmt.Fprintf(stdout, "karapace %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return exitOK
	}
	if global["help"] || c.cmd == nil {
		if c.cmd == nil {
			// Asked for, the help is the answer; not asked for, it says
			// why nothing was done.
			if !global["help"] {
				writeProgramHelp(stderr)
				return exitManifest
			}
			writeProgramHelp(stdout)
			return exitOK
		}
		writeCommandHelp(stdout, c.cmd)
		return exitOK
	}
	n := len(c.args)
	if n < c.cmd.minArgs || (c.cmd.maxArgs >= 0 && n > c.cmd.maxArgs) {
		return c.fail(usageErrorf("%s: expected %s (see 'karapace %s --help')", c.cmd.name, argCount(c.cmd), c.cmd.name))
	}
	if c.cmd.dash == noDash && c.rest != nil {
		return c.fail(usageErrorf("%s: takes no command after '--'", c.cmd.name))
	}
	if c.cmd.dash == requiredDash && len(c.rest) == 0 {
		return c.fail(usageErrorf("%s: no command given after '--'", c.cmd.name))
	}
	return c.fail(c.cmd.run(c))
}

func argCount(cmd *command) string {
	switch {
	case cmd.maxArgs == 0:
		return "no arguments"
	case cmd.minArgs == cmd.maxArgs:
		return fmt.Sprintf("%d argument(s): %s", cmd.minArgs, cmd.synopsis)
	default:
		return "arguments " + cmd.synopsis
	}
}

// fail reports err the way the output mode asks and returns the exit code.
func (c *cli) fail(err error) int {
	if err == nil {
		return exitOK
	}
	code := exitCodeOf(err)
	if _, ok := err.(exitStatus); ok {
		return code
	}
	if c.json {
		writeJSON(c.stderr, map[string]any{"error": map[string]any{
			"kind": errorKind(err), "message": err.Error(), "exit_code": code,
		}})
	} else {
		fmt.Fprintf(c.stderr, "karapace: error: %s\n", err)
	}
	return code
}

// parse reads global flags anywhere on the line, the command name, its
// flags and positional arguments, and whatever follows "--".
func (c *cli) parse(argv []string) (map[string]bool, error) {
	global := map[string]bool{}
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if a == "--" {
			c.rest = argv[i+1:]
			break
		}
		// A command that runs another command takes the rest of the
		// line once its own positional arguments are complete.
		if c.cmd != nil && c.cmd.dash != noDash && c.cmd.maxArgs >= 0 && len(c.args) == c.cmd.maxArgs && !strings.HasPrefix(a, "-") {
			c.rest = argv[i:]
			break
		}
		if len(a) < 2 || a[0] != '-' {
			if c.cmd == nil {
				if a == "help" {
					global["help"] = true
					continue
				}
				if c.cmd = findCommand(a); c.cmd == nil {
					if near := nearestCommand(a); near != "" {
						return global, usageErrorf("unknown command %q; did you mean %q? (see 'karapace --help')", a, near)
					}
					return global, usageErrorf("unknown command %q (see 'karapace --help')", a)
				}
				continue
			}
			c.args = append(c.args, a)
			continue
		}
		if a == "--version" {
			global["version"] = true
			continue
		}
		long := strings.HasPrefix(a, "--")
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a[1:], "-"), "=")
		def, isGlobal := lookupFlag(c.cmd, name, !long)
		if def == nil {
			if c.cmd != nil {
				return global, usageErrorf("%s: unknown flag %s (see 'karapace %s --help')", c.cmd.name, a, c.cmd.name)
			}
			return global, usageErrorf("unknown flag %s (see 'karapace --help')", a)
		}
		if def.arg == "" {
			if hasValue {
				return global, usageErrorf("flag --%s takes no value", def.long)
			}
		} else if !hasValue {
			if i+1 >= len(argv) {
				return global, usageErrorf("flag --%s needs a value (%s)", def.long, def.arg)
			}
			i++
			value = argv[i]
		}
		if !isGlobal {
			c.opts[def.long] = value
			continue
		}
		switch def.long {
		case "store":
			if value == "" {
				return global, usageErrorf("flag --store needs a non-empty PATH")
			}
			c.storeFlag = value
		case "json":
			c.json = true
		default:
			global[def.long] = true
		}
	}
	return global, nil
}

func lookupFlag(cmd *command, name string, short bool) (*flagDef, bool) {
	match := func(f *flagDef) bool {
		if short {
			return f.short != "" && f.short == name
		}
		return f.long == name
	}
	if cmd != nil {
		for i := range cmd.flags {
			if match(&cmd.flags[i]) {
				return &cmd.flags[i], false
			}
		}
	}
	for i := range globalFlags {
		if match(&globalFlags[i]) {
			return &globalFlags[i], true
		}
	}
	return nil, false
}

func writeProgramHelp(w io.Writer) {
	fmt.Fprintf(w, "karapace %s: deterministic, content-addressed, rootless development environments\n\n", version)
	fmt.Fprintf(w, "Usage: karapace [GLOBAL FLAGS] COMMAND [ARGS]\n\nCommands:\n")
	rows := [][]string{}
	for _, c := range commands {
		rows = append(rows, []string{"  " + strings.TrimSpace(c.name+" "+c.synopsis), c.summary})
	}
	writeTable(w, nil, rows)
	fmt.Fprintf(w, "\nGlobal flags (before or after the command):\n")
	writeFlagTable(w, globalFlags)
	fmt.Fprintf(w, "  %-22s %s\n", "--version", "print the version")
	fmt.Fprintf(w, "\nEnvironment: KARAPACE_STORE (store root), KARAPACE_LOG (error|warn|info|debug|trace), NO_COLOR.\n")
	fmt.Fprintf(w, "Exit codes: 0 ok, 1 failure, 2 manifest or lock error, 3 store error.\n")
	fmt.Fprintf(w, "Run 'karapace COMMAND --help' for a command's flags.\n")
}

// nearestCommand is the command a mistyped name most likely meant: one
// at most two edits away, or one the name begins.
func nearestCommand(name string) string {
	best, bestDist := "", 3
	for _, c := range commands {
		if d := editDistance(name, c.name); d < bestDist || d == bestDist && best == "" {
			best, bestDist = c.name, d
		}
		if len(name) >= 3 && strings.HasPrefix(c.name, name) && bestDist > 1 {
			best, bestDist = c.name, 1
		}
	}
	return best
}

// editDistance is the Levenshtein distance between two words.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// usageLine is "karapace COMMAND SYNOPSIS [FLAGS]", one space between.
func usageLine(c *command) string {
	return strings.Join(strings.Fields("karapace "+c.name+" "+c.synopsis+flagsHint(c)), " ")
}

func writeCommandHelp(w io.Writer, c *command) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", usageLine(c), c.summary)
	if c.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.help))
	}
	if len(c.flags) > 0 {
		fmt.Fprintf(w, "\nFlags:\n")
		writeFlagTable(w, c.flags)
	}
	fmt.Fprintf(w, "\nGlobal flags:\n")
	writeFlagTable(w, globalFlags)
}

func flagsHint(c *command) string {
	if len(c.flags) == 0 {
		return ""
	}
	return " [FLAGS]"
}

func flagUsage(f flagDef) string {
	s := "--" + f.long
	if f.short != "" {
		s = "-" + f.short + ", " + s
	}
	if f.arg != "" {
		s += " " + f.arg
	}
	return s
}

func writeFlagTable(w io.Writer, flags []flagDef) {
	for _, f := range flags {
		fmt.Fprintf(w, "  %-22s %s\n", flagUsage(f), f.help)
	}
}
