// SPDX-License-Identifier: GPL-2.0
/*
 * bloom-filter-map: BPF_MAP_TYPE_BLOOM_FILTER (map type 30, Linux 5.16).
 * 5.10 does not know the map type: map creation fails with EINVAL ->
 * UNSUPPORTED_MAP_TYPE. 6.1 and later pass. The program is a plain
 * tracepoint using bpf_map_push_elem/bpf_map_peek_elem (helpers from 4.20),
 * so the lockdown kernel loads it too (attach is a best-effort warning).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_BLOOM_FILTER);
	__uint(max_entries, 1024);
	__type(value, __u32);
	__uint(map_extra, 3); /* number of hash functions */
} seen_tgids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} repeat_execs SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_execve")
int bloom_execve(void *ctx)
{
	__u32 tgid = (__u32)(bpf_get_current_pid_tgid() >> 32);
	__u32 key = 0;
	__u64 *repeats;

	if (bpf_map_peek_elem(&seen_tgids, &tgid) == 0) {
		/* probably seen before */
		repeats = bpf_map_lookup_elem(&repeat_execs, &key);
		if (repeats)
			__sync_fetch_and_add(repeats, 1);
		return 0;
	}
	bpf_map_push_elem(&seen_tgids, &tgid, BPF_ANY);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
