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

// The mock backend prints its argv, ends with N on "exit N", and gives a
// login its shell.
func TestMockBackend(t *testing.T) {
	r := &runSpec{ShortID: "abcdef012345", Dir: envDir(t.TempDir())}
	var b backend = mockBackend{}
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
		b, err := backendFor(name, os.Getenv, nil)
		if err != nil || b.name() != name {
			t.Errorf("backendFor(%q) = %v, %v", name, b, err)
		}
	}
	for _, name := range []string{"docker", ""} {
		b, err := backendFor(name, os.Getenv, nil)
		if err == nil || b != nil || !strings.Contains(err.Error(), `runtime backend "`+name+`" is not available`) {
			t.Errorf("backendFor(%q) = %v, %v; want an error naming it", name, b, err)
		}
	}
}
