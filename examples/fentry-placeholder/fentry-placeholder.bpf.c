// SPDX-License-Identifier: GPL-2.0
/*
 * An fentry program compiled against a placeholder (`dummy_file_read`, a function no
 * kernel has): its loader picks the real target at run time with
 * bpf_program__set_attach_target(), e.g. from a command-line option or by probing
 * which function this kernel has.
 *
 * fentry-placeholder (no manifest): libbpf cannot find the placeholder's BTF id on any
 * kernel -> LOADER_SETUP_REQUIRED, never MISSING_ATTACH_TARGET (no newer kernel would
 * help). fentry-retarget (manifest: attach_target: vfs_read): the kernel's own answer,
 * pass (BPF trampolines exist on x86-64 since 5.5).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("fentry/dummy_file_read")
int trace_read(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
