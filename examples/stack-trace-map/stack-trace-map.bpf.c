// SPDX-License-Identifier: GPL-2.0
/*
 * stack-trace-map: a BPF_MAP_TYPE_STACK_TRACE compiled with value_size 0 and
 * max_entries 0, as profilers ship it: their loader sets the value size from its
 * stack-depth option (depth x 8 bytes) and the entries from a command-line option.
 * The validator gives it 127 frames (PERF_MAX_STACK_DEPTH x 8 = 1016 bytes) and one
 * entry per possible CPU, and the cell is the kernel's verdict: pass.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 0);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 0);
} stacks SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_execve")
int sample_stack(void *ctx)
{
	bpf_get_stackid(ctx, &stacks, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
