// SPDX-License-Identifier: GPL-2.0
/*
 * unsupported-attach-required: the same kprobe on a symbol no kernel has as
 * unsupported-attach, but manifest.yaml marks the program's attach as
 * required, so the attach failure (ENOENT: "failed to create kprobe
 * 'bpfcompat_no_such_function+0x0' perf event: No such file or directory")
 * fails the cell with MISSING_ATTACH_TARGET on every kernel.
 * Lockdown kernel: 6.12's create_local_trace_kprobe() counts the symbol and
 * returns ENOENT before __register_trace_kprobe() checks LOCKDOWN_KPROBES,
 * so the error there is the same ENOENT, not EPERM.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("kprobe/bpfcompat_no_such_function")
int kprobe_missing(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
