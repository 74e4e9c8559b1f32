// SPDX-License-Identifier: GPL-2.0
/*
 * A socket filter in a section named the way iproute2 and older cilium loaders name
 * them ("socket/tail"): libbpf 1.x does not know the convention and cannot tell the
 * program type. The project's loader sets it (bpf_program__set_type).
 *
 * loader-section (no manifest): LOADER_SETUP_REQUIRED, not UNSUPPORTED_PROGRAM_TYPE
 * (every kernel has socket filters). loader-section-typed (manifest: type:
 * socket_filter): the kernel's own answer, pass.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("socket/tail")
int tail_filter(struct __sk_buff *skb)
{
	return skb->len;
}

char LICENSE[] SEC("license") = "GPL";
