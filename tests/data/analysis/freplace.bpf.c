// SPDX-License-Identifier: GPL-2.0
/* An extension program: replaces the global function decide() of another BPF program,
 * which the loader must name when it loads this one. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("freplace/decide")
int replacement(void *ctx)
{
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
