package main

import (
	"errors"
	"fmt"
)

// Exit codes are part of the command-line contract: scripts depend on them.
const (
	exitOK       = 0
	exitFailure  = 1
	exitManifest = 2 // the manifest or the lock file is wrong
	exitStore    = 3 // the store is damaged, locked or of another version
)

// codedError carries the exit code an error maps to and a short kind
// name that --json reports.
type codedError struct {
	code int
	kind string
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// manifestErrorf reports a problem in a manifest or lock file (exit 2).
func manifestErrorf(format string, a ...any) error {
	return &codedError{exitManifest, "manifest", fmt.Errorf(format, a...)}
}

// storeErrorf reports a problem with the store itself (exit 3).
func storeErrorf(format string, a ...any) error {
	return &codedError{exitStore, "store", fmt.Errorf(format, a...)}
}

// usageErrorf reports a wrong command line (exit 1).
func usageErrorf(format string, a ...any) error {
	return &codedError{exitFailure, "usage", fmt.Errorf(format, a...)}
}

// notFoundError marks an error as naming something that is not there
// (an environment), for callers that tell that apart (the D-Bus service).
type notFoundError struct{ error }

func (e notFoundError) Unwrap() error { return e.error }

// storeBusyError marks a store error as another operation holding the
// lock: trying again later may work.
type storeBusyError struct{ error }

func (e storeBusyError) Unwrap() error { return e.error }

// exitStatus is returned by commands that pass on another program's exit
// status (exec, enter) without an error message of their own.
type exitStatus int

func (s exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(s)) }

// exitCodeOf maps an error to the process exit code.
func exitCodeOf(err error) int {
	if err == nil {
		return exitOK
	}
	var st exitStatus
	if errors.As(err, &st) {
		return int(st)
	}
	var c *codedError
	if errors.As(err, &c) {
		return c.code
	}
	return exitFailure
}

// errorKind names the class of an error for JSON output.
func errorKind(err error) string {
	var c *codedError
	if errors.As(err, &c) {
		return c.kind
	}
	return "failure"
}
