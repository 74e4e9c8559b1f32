// SPDX-License-Identifier: GPL-2.0
/*
 * netfilter-prog: a SEC("netfilter") program, BPF_PROG_TYPE_NETFILTER
 * (program type 32, expected attach type BPF_NETFILTER), added in Linux 6.4.
 * 5.10 and 6.1 reject the unknown program type with EINVAL and no verifier
 * log -> UNSUPPORTED_PROGRAM_TYPE. 6.12, 7.2 and lockdown 6.12 load it.
 * libbpf has no auto-attach for netfilter (it needs a hook/priority from the
 * loader), so nothing is attached; that is not a failure.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define NF_DROP   0
#define NF_ACCEPT 1

struct bpf_nf_ctx;

SEC("netfilter")
int nf_accept_all(struct bpf_nf_ctx *ctx)
{
	return NF_ACCEPT;
}

char LICENSE[] SEC("license") = "GPL";
