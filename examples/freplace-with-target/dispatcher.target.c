// SPDX-License-Identifier: GPL-2.0
/*
 * The object freplace-with-target's extension program attaches to: an XDP program
 * calling a global function (policy_hook) that extensions may replace.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

__attribute__((noinline)) int policy_hook(struct xdp_md *ctx)
{
	volatile int verdict = XDP_PASS;

	return ctx ? verdict : XDP_ABORTED;
}

SEC("xdp")
int dispatcher(struct xdp_md *ctx)
{
	return policy_hook(ctx);
}

char LICENSE[] SEC("license") = "GPL";
