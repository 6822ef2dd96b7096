package main

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"
)

// Each kind of error gives its exit code and --json kind, wrapped or not.
func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code int
		kind string
	}{
		{"nil", nil, exitOK, ""},
		{"plain", errors.New("boom"), exitFailure, "failure"},
		{"usage", usageErrorf("unknown flag --x"), exitFailure, "usage"},
		{"manifest", manifestErrorf("karapace.toml:1:1: bad"), exitManifest, "manifest"},
		{"store", storeErrorf("store is locked"), exitStore, "store"},
		{"command not found", commandErr(127, errors.New("x: command not found")), 127, "command"},
		{"exit status", exitStatus(7), 7, "failure"},
		{"exit status 0", exitStatus(0), exitOK, "failure"},
		{"wrapped manifest", fmt.Errorf("building: %w", manifestErrorf("bad")), exitManifest, "manifest"},
		{"wrapped twice store", fmt.Errorf("gc: %w", fmt.Errorf("reading: %w", storeErrorf("damaged"))), exitStore, "store"},
		{"wrapped exit status", fmt.Errorf("exec: %w", exitStatus(42)), 42, "failure"},
		{"outermost code wins", storeErrorf("opening: %w", manifestErrorf("bad")), exitStore, "store"},
	} {
		if got := exitCodeOf(tc.err); got != tc.code {
			t.Errorf("%s: exitCodeOf = %d, want %d", tc.name, got, tc.code)
		}
		if tc.err == nil {
			continue
		}
		if got := errorKind(tc.err); got != tc.kind {
			t.Errorf("%s: errorKind = %q, want %q", tc.name, got, tc.kind)
		}
	}
}

// A coded error reads as its message alone and keeps what it wraps.
func TestCodedErrorMessage(t *testing.T) {
	err := manifestErrorf("reading %s: %w", "karapace.toml", fs.ErrNotExist)
	if got, want := err.Error(), "reading karapace.toml: "+fs.ErrNotExist.Error(); got != want {
		t.Errorf("message %q, want %q", got, want)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Error("the wrapped error is lost")
	}
	if got := exitStatus(3).Error(); got != "exit status 3" {
		t.Errorf("exitStatus message %q", got)
	}
}
