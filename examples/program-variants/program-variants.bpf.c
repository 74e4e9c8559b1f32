// SPDX-License-Identifier: GPL-2.0
/*
 * program-variants: two programs for the same event, the loader keeps one
 * (the Falco recvmmsg_x / recvmmsg_old_x pattern).
 *
 *   loop_x      uses bpf_loop (helper 181, Linux 5.17) with a callback
 *   loop_old_x  same work with a bounded, unrolled loop (any kernel)
 *
 * manifest.yaml declares group loop_x = [loop_x requires bpf_loop,
 * loop_old_x unconditional]. The validator probes bpf_loop and disables the
 * loser before load: 5.10 gets loop_old_x, 6.1+ get loop_x. The isolated
 * per-program probe of loop_x still fails on 5.10 (the callback reference,
 * an ld_imm64 with src_reg BPF_PSEUDO_FUNC, is itself unknown before 5.13:
 * "unrecognized bpf_ld_imm64 insn"); that is per-variant evidence, and the
 * cell passes.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define NR_ITER 16

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} loop_results SEC(".maps");

struct loop_ctx {
	__u64 seed;
	__u64 acc;
};

static long mix_step(__u32 idx, void *data)
{
	struct loop_ctx *lc = data;

	lc->acc = lc->acc * 31 + (lc->seed ^ idx);
	return 0; /* 0: continue looping */
}

static __always_inline void store_result(__u32 slot, __u64 value)
{
	bpf_map_update_elem(&loop_results, &slot, &value, BPF_ANY);
}

SEC("tracepoint/syscalls/sys_enter_execve")
int loop_x(void *ctx)
{
	struct loop_ctx lc = {
		.seed = bpf_get_current_pid_tgid(),
		.acc = 0,
	};

	bpf_loop(NR_ITER, mix_step, &lc, 0);
	store_result(0, lc.acc);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int loop_old_x(void *ctx)
{
	__u64 seed = bpf_get_current_pid_tgid();
	__u64 acc = 0;
	__u32 i;

#pragma unroll
	for (i = 0; i < NR_ITER; i++)
		acc = acc * 31 + (seed ^ i);

	store_result(1, acc);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
