// SPDX-License-Identifier: GPL-2.0
/* A map no program uses, as loaders that probe kernel features declare them: its type
 * (bloom filter, 5.16) sets the floor of a plain libbpf load, not of the programs. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_BLOOM_FILTER);
	__uint(max_entries, 16);
	__type(value, __u32);
} probe_bloom SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

SEC("kprobe/do_nanosleep")
int count_sleeps(void *ctx)
{
	__u32 key = 0;
	__u64 one = 1;

	bpf_map_update_elem(&counts, &key, &one, BPF_NOEXIST);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
