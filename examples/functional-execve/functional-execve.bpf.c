// SPDX-License-Identifier: GPL-2.0
/*
 * functional-execve: bpf_printk a fixed marker on every execve. The
 * manifest's functional test runs /bin/true while the link is alive and
 * expects the marker in /sys/kernel/tracing/trace_pipe.
 *
 * bpf_printk with no arguments is bpf_trace_printk (helper 6), which every
 * kernel in the matrix allows for tracepoint programs (it is not one of the
 * helpers lockdown removes). On the lockdown kernel the object still loads,
 * but tracefs is unavailable: the tracepoint attach fails (a warning under
 * best-effort) and trace_pipe does not exist, so the required functional
 * test fails -> FUNCTIONAL_TEST_FAILURE there.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tracepoint/syscalls/sys_enter_execve")
int execve_marker(void *ctx)
{
	bpf_printk("bpfcompat-execve-marker");
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
