// SPDX-License-Identifier: GPL-2.0
/*
 * verifier-oob: reads 8 bytes past the end of an 8-byte map value. The
 * verifier rejects it on every kernel ("invalid access to map value,
 * value_size=8 off=8 size=8", EACCES) -> VERIFIER_REJECTION. No
 * lockdown-gated helper is involved, so lockdown 6.12 gives the same result.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_execve")
int read_past_value(void *ctx)
{
	__u32 key = 0;
	__u64 *value;
	volatile __u64 *next;

	value = bpf_map_lookup_elem(&counters, &key);
	if (!value)
		return 0;

	next = value + 1; /* one __u64 past the 8-byte value */
	return *next != 0;
}

char LICENSE[] SEC("license") = "GPL";
