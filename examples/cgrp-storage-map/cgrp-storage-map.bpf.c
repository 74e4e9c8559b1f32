// SPDX-License-Identifier: GPL-2.0
/*
 * cgrp-storage-map: BPF_MAP_TYPE_CGRP_STORAGE (map type 32, Linux 6.2),
 * used from tp_btf/cgroup_mkdir with bpf_cgrp_storage_get (helper 210, 6.2).
 * libbpf creates maps before loading programs, so on 5.10 and 6.1 the map
 * creation fails first (EINVAL, unknown map type) -> UNSUPPORTED_MAP_TYPE.
 * 6.12 and 7.2 pass. Lockdown 6.12: loads (tp_btf attaches through a raw
 * tracepoint link, no tracefs needed) -> pass.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

/* Not in the 6.1 UAPI headers this is built against. */
#define BPFCOMPAT_MAP_TYPE_CGRP_STORAGE 32

struct {
	__uint(type, BPFCOMPAT_MAP_TYPE_CGRP_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} cgrp_mkdirs SEC(".maps");

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(count_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	__u64 *count;

	count = bpf_cgrp_storage_get(&cgrp_mkdirs, cgrp, 0,
				     BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (count)
		__sync_fetch_and_add(count, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
