// SPDX-License-Identifier: GPL-2.0
/*
 * An fentry program whose section names no target at all (SEC("fentry")): its loader
 * calls bpf_program__set_attach_target() before load, with a function it picks at run
 * time (e.g. one program retargeted at each of many kernel functions).
 *
 * Without that call libbpf refuses the program before asking the kernel ("no BTF-based
 * attach target is specified") -> LOADER_SETUP_REQUIRED with the manifest lines that
 * declare the target, never UNKNOWN or a kernel verdict. SEC("lsm") and SEC("fexit")
 * without a target behave the same.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("fentry")
int trace_any(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
