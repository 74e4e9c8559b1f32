// SPDX-License-Identifier: GPL-2.0
/*
 * freplace-with-target: an extension program replacing the policy_hook() function of an
 * XDP dispatcher that another object provides (dispatcher.target.c, built beside it):
 * the manifest names that object and program (attach_target_program) and the function
 * (attach_target), as the project's loader passes them. The validator loads the
 * dispatcher first, then the extension against it: the kernel's own answer, pass
 * (extension programs exist since 5.6).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("freplace/policy_hook")
int replacement_hook(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
