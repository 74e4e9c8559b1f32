// SPDX-License-Identifier: GPL-2.0
/*
 * simple-pass: the smallest useful object. One tracepoint program on
 * syscalls/sys_enter_execve that does nothing and returns 0.
 *
 * Expected: loads everywhere. Attach needs tracefs (libbpf reads the
 * tracepoint id from /sys/kernel/tracing/events/...), so on the lockdown
 * kernel the attach fails; with the default best-effort attach mode that is
 * a warning and the cell still passes.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tracepoint/syscalls/sys_enter_execve")
int simple_pass(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
