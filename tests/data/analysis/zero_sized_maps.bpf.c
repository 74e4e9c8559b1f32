// SPDX-License-Identifier: GPL-2.0
/* Maps whose sizes the project's loader sets at run time: a per-CPU scratch array and a
 * hash compiled with max_entries 0, a stack-trace map whose value size (the stack depth)
 * is chosen by the loader, a perf event array without key/value sizes (a Go loader fills
 * them in) and a map whose value type is only declared. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 0);
	__type(key, __u32);
	__type(value, __u64);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 0);
	__type(key, __u32);
	__type(value, __u32);
} seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 1024);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 0);
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
} events SEC(".maps");

struct opaque_value;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, struct opaque_value);
} opaque SEC(".maps");

SEC("perf_event")
int sample_stack(void *ctx)
{
	__u32 zero = 0, one = 1;
	__u64 *slot = bpf_map_lookup_elem(&scratch, &zero);
	long id = bpf_get_stackid(ctx, &stacks, 0);

	if (slot)
		*slot = id;
	bpf_map_update_elem(&seen, &zero, &one, BPF_ANY);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
