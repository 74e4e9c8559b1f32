// SPDX-License-Identifier: GPL-2.0
/*
 * printk-many-args: bpf_printk with more than three arguments expands (in
 * libbpf's bpf_helpers.h) to bpf_trace_vprintk, helper 177, Linux 5.16; with
 * three or fewer it is bpf_trace_printk (helper 6, 4.1). One program of each.
 *
 * 5.10 has no helper 177: the verifier prints "invalid func unknown#177" for
 * print_four and the object fails (UNSUPPORTED_HELPER), while print_three on
 * its own loads there. 6.1 and later pass. Neither helper is lockdown-gated,
 * so the lockdown kernel passes (tracepoint attach is best-effort).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tracepoint/syscalls/sys_enter_execve")
int print_four(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	bpf_printk("execve pid %u tgid %u cpu %u %s", (__u32)id, (__u32)(id >> 32),
		   bpf_get_smp_processor_id(), "four");
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int print_three(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	bpf_printk("execve pid %u tgid %u cpu %u", (__u32)id, (__u32)(id >> 32),
		   bpf_get_smp_processor_id());
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
