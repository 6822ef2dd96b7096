package main

import (
	"strings"
	"testing"
)

// Every command of the table has its help, with -h and --help, exit 0.
func TestEveryCommandHelp(t *testing.T) {
	for _, cmd := range commands {
		for _, h := range []string{"-h", "--help"} {
			code, out, errOut := runCLI(t, nil, cmd.name, h)
			if code != exitOK || errOut != "" {
				t.Errorf("%s %s: exit %d, stderr %q", cmd.name, h, code, errOut)
			}
			if !strings.HasPrefix(out, "Usage: karapace "+cmd.name) || !strings.Contains(out, "\n"+cmd.summary+"\n") {
				t.Errorf("%s %s printed:\n%s", cmd.name, h, out)
			}
		}
	}
}
