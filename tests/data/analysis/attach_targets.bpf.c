// SPDX-License-Identifier: GPL-2.0
/* BTF-attached programs: one on a placeholder the loader retargets at run time, one with no
 * target at all, and real targets every kernel of the matrix has. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("fentry/dummy_file_open")
int retargeted(void *ctx)
{
	return 0;
}

SEC("fexit")
int untargeted(void *ctx)
{
	return 0;
}

SEC("fentry/do_unlinkat")
int real_fentry(void *ctx)
{
	return 0;
}

SEC("lsm/file_open")
int real_lsm(void *ctx)
{
	return 0;
}

SEC("tp_btf/sched_switch")
int real_tp_btf(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
