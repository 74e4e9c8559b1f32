// SPDX-License-Identifier: GPL-2.0
/* ISA features, compiled with -mcpu=v3: a fetching atomic and JMP32 compares, a bounded
 * loop the compiler cannot unroll, a BPF-to-BPF call, a callback, a tail call, a printk
 * with more than 3 arguments, bpf_probe_read_kernel and a legacy-free global. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 4);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} jumps SEC(".maps");

__u64 counter;
volatile __u32 bound = 16;

static __attribute__((noinline)) __u32 twice(__u32 x)
{
	return x * 2 + bound;
}

static long step(__u32 index, void *data)
{
	*(__u64 *)data += index;
	return 0;
}

SEC("raw_tp/sys_enter")
int isa_features(void *ctx)
{
	__u64 sum = 0, value = 0;
	__u32 i, n = bound;

	for (i = 0; i < n && i < 64; i++)
		sum += i * twice(i);
	bpf_loop(4, step, &sum, 0);
	sum += __sync_fetch_and_add(&counter, 1);
	bpf_probe_read_kernel(&value, sizeof(value), ctx);
	bpf_printk("%llu %llu %u %u", sum, value, n, i);
	bpf_tail_call(ctx, &jumps, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
