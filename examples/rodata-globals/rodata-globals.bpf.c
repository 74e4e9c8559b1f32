// SPDX-License-Identifier: GPL-2.0
/*
 * rodata-globals: `const volatile` switches its loader sets before load (a feature flag,
 * a marker value), the way projects pass a pid filter or a config to their programs.
 * Compiled with `enabled = false`, the program does nothing; the manifest's
 *   globals: {enabled: true, marker: 4242, tag: "bpfcompat"}
 * sets them as the project's loader would, and the functional test proves the values
 * reached the kernel: the marker appears in trace_pipe when /bin/true runs.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

const volatile bool enabled = false;
const volatile int marker = 0;
const volatile char tag[16] = "";

SEC("tracepoint/syscalls/sys_enter_execve")
int globals_execve(void *ctx)
{
	if (!enabled)
		return 0;
	bpf_printk("bpfcompat-global-%d-%s", marker, tag);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
