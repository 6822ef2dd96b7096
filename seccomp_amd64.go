package main

import "golang.org/x/sys/unix"

const (
	seccompArch = unix.AUDIT_ARCH_X86_64
	seccompX32  = true // x32 system calls come with this architecture
)

// seccompArchDenied are the system calls only this architecture has.
var seccompArchDenied = []seccompRule{
	{"iopl", unix.SYS_IOPL, "gives direct access to I/O ports"},
	{"ioperm", unix.SYS_IOPERM, "gives direct access to I/O ports"},
	{"uselib", unix.SYS_USELIB, "obsolete; loads a library the old way"},
	{"_sysctl", unix.SYS__SYSCTL, "obsolete interface to the kernel's settings"},
	{"create_module", unix.SYS_CREATE_MODULE, "obsolete module loading"},
	{"get_kernel_syms", unix.SYS_GET_KERNEL_SYMS, "obsolete; lists kernel symbols"},
	{"query_module", unix.SYS_QUERY_MODULE, "obsolete module interface"},
	{"nfsservctl", unix.SYS_NFSSERVCTL, "obsolete kernel NFS server control"},
	{"ustat", unix.SYS_USTAT, "obsolete; reports on the host's filesystems"},
	{"sysfs", unix.SYS_SYSFS, "obsolete; lists the kernel's filesystem types"},
}
