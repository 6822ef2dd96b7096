package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// Manual pages in mdoc, written from the command table: karapace(1) and
// one page per command.

// manDate is the date of this version's pages; fixed, so that the same
// source always writes the same bytes.
const manDate = "November 22, 2026"

func cmdManPages(c *cli) error {
	dir := "man"
	if len(c.args) > 0 {
		dir = c.args[0]
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pages := map[string]string{"karapace.1": mainManPage()}
	for _, cmd := range commands {
		pages["karapace-"+cmd.name+".1"] = commandManPage(cmd)
	}
	var written []string
	for _, name := range append([]string{"karapace.1"}, commandPageNames()...) {
		p := filepath.Join(dir, name)
		if err := writeFileAtomic(p, []byte(pages[name]), 0o644); err != nil {
			return err
		}
		written = append(written, p)
	}
	return c.report(map[string]any{"pages": written}, func() string {
		return fmt.Sprintf("wrote %d manual pages to %s", len(written), dir)
	})
}

func commandPageNames() []string {
	var out []string
	for _, cmd := range commands {
		out = append(out, "karapace-"+cmd.name+".1")
	}
	return out
}

// roffText turns prose into mdoc text lines: one sentence per line, no
// line starting with a control character, backslashes escaped.
func roffText(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	var out []string
	for _, para := range strings.Split(strings.TrimSpace(s), "\n\n") {
		text := strings.Join(strings.Fields(para), " ")
		sentences := sentenceEnd().ReplaceAllString(text, "$1\n")
		var lines []string
		for _, sentence := range strings.Split(sentences, "\n") {
			for _, l := range wrapWords(sentence, 78) {
				if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
					l = `\&` + l
				}
				lines = append(lines, l)
			}
		}
		out = append(out, strings.Join(lines, "\n"))
	}
	return strings.Join(out, "\n.Pp\n")
}

// wrapWords breaks text into lines of at most width bytes where it can.
func wrapWords(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return append(lines, line)
}

var sentenceEnd = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`([a-z0-9)][.;:]) `) })

// synopsisMacros renders a synopsis like "ENV [-- CMD...]" with mdoc macros.
func synopsisMacros(syn string) string {
	var b strings.Builder
	tokens := strings.Fields(syn)
	for i := 0; i < len(tokens); i++ {
		t := tokens[i]
		if strings.HasPrefix(t, "[") {
			group := []string{strings.TrimPrefix(t, "[")}
			for !strings.HasSuffix(group[len(group)-1], "]") && i+1 < len(tokens) {
				i++
				group = append(group, tokens[i])
			}
			group[len(group)-1] = strings.TrimSuffix(group[len(group)-1], "]")
			b.WriteString(".Op")
			for _, g := range group {
				b.WriteString(" " + synopsisWord(g))
			}
			b.WriteString("\n")
			continue
		}
		b.WriteString("." + synopsisWord(t) + "\n")
	}
	return b.String()
}

func synopsisWord(t string) string {
	if t == "--" {
		return "Fl -"
	}
	if strings.HasSuffix(t, "...") {
		return "Ar " + strings.TrimSuffix(t, "...") + " ..."
	}
	return "Ar " + t
}

func flagItem(f flagDef) string {
	s := ".It Fl -" + f.long
	if f.short != "" {
		s = ".It Fl " + f.short + " , Fl -" + f.long
	}
	if f.arg != "" {
		s += " Ar " + f.arg
	}
	return s + "\n" + roffText(f.help) + "\n"
}

func flagList(flags []flagDef) string {
	var b strings.Builder
	b.WriteString(".Bl -tag -width Ds\n")
	for _, f := range flags {
		b.WriteString(flagItem(f))
	}
	b.WriteString(".El\n")
	return b.String()
}

const manExitStatus = `.Sh EXIT STATUS
.Bl -tag -width Ds -compact
.It 0
success
.It 1
failure, or a wrong command line
.It 2
the manifest or the lock file is wrong
.It 3
the store is damaged, locked or of another version
.El
`

func mainManPage() string {
	var b strings.Builder
	fmt.Fprintf(&b, ".Dd %s\n.Dt KARAPACE 1\n.Os\n.Sh NAME\n.Nm karapace\n.Nd deterministic, content-addressed, rootless development environments\n", manDate)
	b.WriteString(".Sh SYNOPSIS\n.Nm\n.Op Ar global flags\n.Ar command\n.Op Ar arguments\n")
	b.WriteString(".Sh DESCRIPTION\n" + roffText(`karapace builds development environments from a karapace.toml manifest: it resolves the
base image and the packages, pins what it resolved in karapace.lock, builds the environment
from layers in a content-addressed store, and runs commands in it with user namespaces,
without root and without a daemon.`) + "\n")
	b.WriteString(".Sh COMMANDS\n.Bl -tag -width Ds\n")
	for _, c := range commands {
		b.WriteString(".It Cm " + c.name)
		if c.synopsis != "" {
			b.WriteString("\n" + strings.TrimSuffix(strings.ReplaceAll(synopsisMacros(c.synopsis), "\n.", " "), "\n"))
		}
		b.WriteString("\n" + roffText(c.summary) + ".\nSee\n.Xr karapace-" + c.name + " 1 .\n")
	}
	b.WriteString(".El\n.Sh OPTIONS\nThe global flags go before or after the command.\n" + flagList(globalFlags))
	b.WriteString(`.Sh ENVIRONMENT
.Bl -tag -width Ds
.It Ev KARAPACE_STORE
the store root, unless
.Fl -store
is given
.It Ev XDG_DATA_HOME
the store is
.Pa $XDG_DATA_HOME/karapace
otherwise
.It Ev KARAPACE_LOG
log level: error, warn, info, debug or trace
.It Ev KARAPACE_LOCK_WAIT
how long a command waits for the store lock, as a duration like 5s
.It Ev KARAPACE_IMAGE_SERVER
the LXC image server (or mirror) aliases resolve on
.It Ev NO_COLOR
no colours, even on a terminal
.El
.Sh FILES
.Bl -tag -width Ds
.It Pa karapace.toml
the manifest
.It Pa karapace.lock
what the manifest resolved to, beside it
.It Pa $XDG_CONFIG_HOME/karapace/config.toml
the policy and the image server
.El
`)
	b.WriteString(manExitStatus)
	b.WriteString(".Sh SEE ALSO\n")
	names := commandPageNames()
	sort.Strings(names)
	for i, n := range names {
		sep := " ,"
		if i == len(names)-1 {
			sep = ""
		}
		b.WriteString(".Xr " + strings.TrimSuffix(n, ".1") + " 1" + sep + "\n")
	}
	return b.String()
}

func commandManPage(c *command) string {
	var b strings.Builder
	upper := strings.ToUpper("karapace-" + c.name)
	fmt.Fprintf(&b, ".Dd %s\n.Dt %s 1\n.Os\n.Sh NAME\n.Nm karapace-%s\n.Nd %s\n", manDate, upper, c.name, c.summary)
	b.WriteString(".Sh SYNOPSIS\n.Nm karapace\n.Cm " + c.name + "\n")
	if len(c.flags) > 0 {
		b.WriteString(".Op Ar flags\n")
	}
	b.WriteString(synopsisMacros(c.synopsis))
	b.WriteString(".Sh DESCRIPTION\n")
	text := c.help
	if text == "" {
		text = strings.ToUpper(c.summary[:1]) + c.summary[1:] + "."
	}
	b.WriteString(roffText(text) + "\n")
	if len(c.flags) > 0 {
		b.WriteString(".Sh OPTIONS\n" + flagList(c.flags))
	}
	b.WriteString(manExitStatus)
	b.WriteString(".Sh SEE ALSO\n.Xr karapace 1\n")
	return b.String()
}
