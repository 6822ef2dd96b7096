package main

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// One value per variable, the last one given, in first-appearance order.
func TestLastWins(t *testing.T) {
	got := lastWins([]string{"A=1", "B=2", "A=3", "C=", "B=4=four", "D", "A=5"})
	want := []string{"A=5", "B=4=four", "C=", "D"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("lastWins = %q, want %q", got, want)
	}
	if got := lastWins(nil); len(got) != 0 {
		t.Fatalf("lastWins(nil) = %q", got)
	}
}

// A command's environment: karapace's own variables, the host's that the
// policy lets through, then what karapace sets, later ones winning; on a
// terminal TERM is set when the host gave none.
func TestCommandEnv(t *testing.T) {
	cfg := t.TempDir() // no config.toml: the default policy
	b := nsBackend{getenv: func(k string) string { return map[string]string{"XDG_CONFIG_HOME": cfg}[k] }}
	r := &runSpec{ID: "abcdef0123456789", ShortID: "abcdef012345"}
	e := &execSpec{
		Env: []string{"PATH=/host/bin", "HOME=/home/u", "LANG=C.UTF-8", "GITHUB_TOKEN=x", "TERM=screen"},
		Set: []string{"LANG=en_US.UTF-8", "HOME=/work"},
		TTY: true,
	}
	want := []string{"PATH=" + containerPath, "HOME=/work", "USER=root", "LOGNAME=root",
		"HOSTNAME=karapace-abcdef012345", "container=karapace", "KARAPACE_ENV=1", "KARAPACE_ENV_ID=abcdef0123456789",
		"LANG=en_US.UTF-8", "TERM=screen"}
	if got := b.commandEnv(r, e); !reflect.DeepEqual(got, want) {
		t.Fatalf("commandEnv:\n%q\nwant\n%q", got, want)
	}
	e.Env = e.Env[:4]
	if got := b.commandEnv(r, e); got[len(got)-1] != "TERM=xterm-256color" {
		t.Fatalf("on a terminal without TERM: %q", got)
	}
	e.TTY = false
	if got := b.commandEnv(r, e); hasEnv(got, "TERM") {
		t.Fatalf("TERM set without a terminal: %q", got)
	}
}

// The mock backend prints its argv, ends with N on "exit N", and gives a
// login its shell.
func TestMockBackend(t *testing.T) {
	r := &runSpec{ShortID: "abcdef012345", Dir: envDir(t.TempDir())}
	var b backend = mockBackend{}
	if err := b.prepare(r); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(r.Dir.upper()); err != nil || !st.IsDir() {
		t.Fatalf("prepare made no writable layer: %v", err)
	}
	for _, tc := range []struct {
		argv  []string
		login bool
		code  int
		out   string
	}{
		{[]string{"echo", "hi", "--flag"}, false, 0, "mock[abcdef012345]: echo hi --flag\n"},
		{[]string{"exit", "3"}, false, 3, ""},
		{[]string{"exit", "0"}, false, 0, ""},
		{[]string{"exit", "x"}, false, 0, "mock[abcdef012345]: exit x\n"},
		{[]string{"exit", "3", "4"}, false, 0, "mock[abcdef012345]: exit 3 4\n"},
		{nil, true, 0, "mock[abcdef012345]: -sh\n"},
	} {
		out, err := os.CreateTemp(t.TempDir(), "stdout")
		if err != nil {
			t.Fatal(err)
		}
		code, err := b.exec(r, &execSpec{Argv: tc.argv, Login: tc.login, Stdio: [3]*os.File{nil, out, nil}})
		out.Close()
		got, _ := os.ReadFile(out.Name())
		if err != nil || code != tc.code || string(got) != tc.out {
			t.Errorf("%q: status %d, %v, printed %q; want %d, %q", tc.argv, code, err, got, tc.code, tc.out)
		}
	}
	if _, running := b.status(r); running {
		t.Error("the mock backend reports a running environment")
	}
}

// Only the backends there are can be asked for, by name.
func TestBackendFor(t *testing.T) {
	for _, name := range []string{"namespace", "mock"} {
		b, err := backendFor(name)
		if err != nil || b.name() != name {
			t.Errorf("backendFor(%q) = %v, %v", name, b, err)
		}
	}
	for _, name := range []string{"docker", ""} {
		b, err := backendFor(name)
		if err == nil || b != nil || !strings.Contains(err.Error(), `runtime backend "`+name+`" is not available`) {
			t.Errorf("backendFor(%q) = %v, %v; want an error naming it", name, b, err)
		}
	}
}
