// SPDX-License-Identifier: GPL-2.0
/*
 * fentry-missing-target: an fentry program for a function no kernel has.
 * libbpf must find the target's BTF id before it can load the program and
 * fails in userspace: "prog 'fentry_missing': failed to find kernel BTF type
 * ID of 'bpfcompat_no_such_function': -3" (ESRCH). No kernel of the matrix has the
 * function, so it is the loader's to set: LOADER_SETUP_REQUIRED
 * on every kernel, lockdown included (the kernel is never asked).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("fentry/bpfcompat_no_such_function")
int fentry_missing(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
