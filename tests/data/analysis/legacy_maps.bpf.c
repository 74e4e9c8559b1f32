// SPDX-License-Identifier: GPL-2.0
/* A map in the pre-BTF SEC("maps") form (struct bpf_map_def), which libbpf 1.0 dropped. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct legacy_map_def {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
};

struct legacy_map_def counts SEC("maps") = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = sizeof(__u32),
	.value_size = sizeof(__u64),
	.max_entries = 8,
};

SEC("socket")
int count_packets(void *ctx)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(&counts, &key);

	if (value)
		*value += 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
