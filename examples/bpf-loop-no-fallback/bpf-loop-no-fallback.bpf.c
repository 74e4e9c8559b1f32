// SPDX-License-Identifier: GPL-2.0
/*
 * bpf-loop-no-fallback: calls bpf_loop (helper 181, Linux 5.17) with no
 * fallback variant. 6.1 and later pass; 5.10 fails -> UNSUPPORTED_HELPER.
 *
 * What 5.10 actually prints: the callback is referenced with an ld_imm64
 * whose src_reg is BPF_PSEUDO_FUNC (Linux 5.13), which 5.10 rejects while
 * resolving ld_imm64 instructions, before it ever reaches the call:
 * "unrecognized bpf_ld_imm64 insn" (EINVAL). "invalid func unknown#181" is
 * not printed. The classifier has to combine that with the helper probe
 * (bpf_loop absent on 5.10) to name the real cause.
 *
 * bpf_loop is a base helper (no lockdown gate), so the lockdown kernel
 * passes too.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} loop_sum SEC(".maps");

static long add_index(__u32 idx, void *data)
{
	*(__u64 *)data += idx;
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int loop_only(void *ctx)
{
	__u64 sum = 0;
	__u32 key = 0;

	bpf_loop(32, add_index, &sum, 0);
	bpf_map_update_elem(&loop_sum, &key, &sum, BPF_ANY);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
