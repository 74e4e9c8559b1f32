// SPDX-License-Identifier: GPL-2.0
/*
 * gpl-helper-proprietary: a "Proprietary" licensed object calling
 * bpf_get_current_task (helper 35, gpl_only = true since it was added in
 * 4.8). The verifier refuses it on every kernel with "cannot call
 * GPL-restricted function from non-GPL compatible program" (EINVAL)
 * -> LICENSE_INCOMPATIBLE.
 *
 * bpf_get_current_task was chosen over bpf_probe_read_kernel/bpf_printk on
 * purpose: it is not removed by lockdown, so the lockdown kernel reaches the
 * same licence check (bpf_probe_read_kernel would be refused there first as
 * "cannot use helper") -> LICENSE_INCOMPATIBLE there too.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

__u64 last_task;

SEC("tracepoint/syscalls/sys_enter_execve")
int proprietary_current_task(void *ctx)
{
	last_task = bpf_get_current_task();
	return 0;
}

/* The point of this example: a non-GPL-compatible licence. */
char LICENSE[] SEC("license") = "Proprietary";
