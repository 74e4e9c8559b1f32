// SPDX-License-Identifier: GPL-2.0
/*
 * freplace-target: an extension program (BPF_PROG_TYPE_EXT) that replaces a global
 * function of another, already loaded BPF program (an XDP dispatcher's slot, a policy
 * hook): its loader passes that program's fd with bpf_program__set_attach_target().
 * A generic loader has no target program, so libbpf refuses to load it on every
 * kernel: LOADER_SETUP_REQUIRED, not a kernel verdict.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("freplace/policy_hook")
int replacement_hook(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
