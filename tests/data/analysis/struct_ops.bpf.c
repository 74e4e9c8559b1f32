// SPDX-License-Identifier: GPL-2.0
/* Two struct_ops maps: TCP congestion control (every kernel of the matrix has it) and a
 * scheduler (sched_ext, only recent kernels). The kernel structs are declared by hand with
 * just the members used; libbpf matches them by name. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct sock;

struct tcp_congestion_ops {
	__u32 (*ssthresh)(struct sock *sk);
	void (*cong_avoid)(struct sock *sk, __u32 ack, __u32 acked);
	__u32 (*undo_cwnd)(struct sock *sk);
	char name[16];
};

struct task_struct;

struct sched_ext_ops {
	__s32 (*init)(void);
	char name[128];
};

SEC("struct_ops/cc_ssthresh")
__u32 cc_ssthresh(struct sock *sk)
{
	return 2;
}

SEC("struct_ops/cc_cong_avoid")
void cc_cong_avoid(struct sock *sk, __u32 ack, __u32 acked)
{
}

SEC("struct_ops/cc_undo_cwnd")
__u32 cc_undo_cwnd(struct sock *sk)
{
	return 10;
}

SEC("struct_ops.s/sched_init")
__s32 sched_init(void)
{
	return 0;
}

SEC(".struct_ops")
struct tcp_congestion_ops fixture_cc = {
	.ssthresh = (void *)cc_ssthresh,
	.cong_avoid = (void *)cc_cong_avoid,
	.undo_cwnd = (void *)cc_undo_cwnd,
	.name = "bpfcompat_cc",
};

SEC(".struct_ops.link")
struct sched_ext_ops fixture_sched = {
	.init = (void *)sched_init,
	.name = "bpfcompat_sched",
};

char LICENSE[] SEC("license") = "GPL";
