// SPDX-License-Identifier: GPL-2.0
/*
 * unsupported-attach: a kprobe on a symbol no kernel has. The program itself
 * is valid and loads (kprobe programs are checked at attach time, not load
 * time); the attach fails with ENOENT ("failed to create kprobe
 * 'bpfcompat_no_such_function+0x0' perf event: No such file or directory").
 * With the default best-effort attach mode that is a warning: the cell passes.
 * Same result on the lockdown kernel (6.12 rejects an unknown symbol with
 * ENOENT in create_local_trace_kprobe, before its lockdown check).
 * See unsupported-attach-required for the same object with attach required.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("kprobe/bpfcompat_no_such_function")
int kprobe_missing(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
