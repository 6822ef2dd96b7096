package main

import (
	"reflect"
	"testing"
)

// A command's environment: karapace's own variables, the host's that the
// policy lets through, then what karapace sets, later ones winning; on a
// terminal TERM is set when the host gave none.
func TestCommandEnv(t *testing.T) {
	cfg := t.TempDir() // no config.toml: the default policy
	getenv := func(k string) string { return map[string]string{"XDG_CONFIG_HOME": cfg}[k] }
	r := &runSpec{ID: "abcdef0123456789", ShortID: "abcdef012345"}
	e := &execSpec{
		Env: []string{"PATH=/host/bin", "HOME=/home/u", "LANG=C.UTF-8", "GITHUB_TOKEN=x", "TERM=screen"},
		Set: []string{"LANG=en_US.UTF-8", "HOME=/work"},
		TTY: true,
	}
	want := []string{"PATH=" + containerPath, "HOME=/work", "USER=root", "LOGNAME=root",
		"HOSTNAME=karapace-abcdef012345", "container=karapace", "KARAPACE_ENV=1", "KARAPACE_ENV_ID=abcdef0123456789",
		"LANG=en_US.UTF-8", "TERM=screen"}
	if got := commandEnv(r, e, getenv); !reflect.DeepEqual(got, want) {
		t.Fatalf("commandEnv:\n%q\nwant\n%q", got, want)
	}
	e.Env = e.Env[:4]
	if got := commandEnv(r, e, getenv); got[len(got)-1] != "TERM=xterm-256color" {
		t.Fatalf("on a terminal without TERM: %q", got)
	}
	e.TTY = false
	if got := commandEnv(r, e, getenv); hasEnv(got, "TERM") {
		t.Fatalf("TERM set without a terminal: %q", got)
	}
}
