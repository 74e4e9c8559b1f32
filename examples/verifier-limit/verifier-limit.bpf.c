// SPDX-License-Identifier: GPL-2.0
/*
 * verifier-limit: hits a verifier complexity limit cheaply.
 *
 * 10000 conditional jumps in a row compare two unknown scalars
 * (bpf_get_prandom_u32 results). The verifier explores depth-first: at each
 * jump it pushes the not-taken branch on its stack and continues down the
 * fall-through path, so the stack grows by one per jump. When it exceeds
 * BPF_COMPLEXITY_LIMIT_JMP_SEQ (8192 from 5.10 through 6.18) it stops with
 * "The sequence of 8193 jumps is too complex." -> VERIFIER_LIMIT.
 *
 * Cost: ~16k instructions processed, no exponential path exploration, so it
 * stays fast even under TCG emulation. The instruction sequence is written
 * in inline asm so the compiler cannot fold or merge the branches.
 * Only bpf_get_prandom_u32 (a base helper) is used, so lockdown 6.12 fails
 * the same way. (The 1M-instruction "BPF program is too large" limit would
 * cost seconds of verifier time under emulation; this one is cheaper.)
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define REP10(x) x x x x x x x x x x
#define REP10000(x) REP10(REP10(REP10(REP10(x))))

/* Taken branch skips the following instruction; both outcomes are
 * possible, so every jump forks the verifier state. */
#define FORK "if r6 > r7 goto +1\n\tr8 += 1\n\t"

SEC("tracepoint/syscalls/sys_enter_execve")
int too_many_branches(void *ctx)
{
	asm volatile(
		"call %[rand]\n\t"
		"r6 = r0\n\t"
		"call %[rand]\n\t"
		"r7 = r0\n\t"
		"r8 = 0\n\t"
		REP10000(FORK)
		:
		: [rand] "i"(BPF_FUNC_get_prandom_u32)
		: "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "memory");
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
