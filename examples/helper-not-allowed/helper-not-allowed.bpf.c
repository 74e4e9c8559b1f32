// SPDX-License-Identifier: GPL-2.0
/*
 * helper-not-allowed: a tracepoint program calling bpf_skb_load_bytes
 * (helper 26, exists since 4.5 but only for socket/tc/... program types).
 * The helper exists on every kernel; the tracepoint program type may not use
 * it. Verifier: "unknown func bpf_skb_load_bytes#26" on older kernels,
 * "program of this type cannot use helper bpf_skb_load_bytes#26" on newer
 * ones (EINVAL) -> HELPER_NOT_ALLOWED everywhere.
 *
 * Lockdown 6.12: same message, same cause. bpf_skb_load_bytes is not a
 * helper lockdown removes, so this must not be read as POLICY_DENIED.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tracepoint/syscalls/sys_enter_execve")
int skb_helper_in_tracepoint(void *ctx)
{
	char buf[4] = {};

	if (bpf_skb_load_bytes(ctx, 0, buf, sizeof(buf)) < 0)
		return 0;
	return buf[0];
}

char LICENSE[] SEC("license") = "GPL";
