package main

import "golang.org/x/sys/unix"

const (
	seccompArch = unix.AUDIT_ARCH_AARCH64
	seccompX32  = false
)

// seccompArchDenied: arm64 has none of the obsolete calls of x86.
var seccompArchDenied []seccompRule
