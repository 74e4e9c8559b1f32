// SPDX-License-Identifier: GPL-2.0
/*
 * zero-sized-maps: maps compiled with max_entries 0 that the project's own loader
 * sizes before load (from the CPU count, or a command-line option), with no manifest
 * saying so:
 *
 *   per_cpu_stats  BPF_MAP_TYPE_PERCPU_ARRAY, max_entries 0
 *   events         BPF_MAP_TYPE_RINGBUF, max_entries 0
 *
 * Loaded as-is every kernel refuses the maps (EINVAL): the loader's job, not the
 * kernel's answer. The validator sizes them as a loader would (one entry per possible
 * CPU, a 256 KiB ring buffer), reports each automatic fixup with the manifest lines that
 * would declare it, and the cell carries the kernel's own verdict: pass (ring buffers
 * exist since 5.8). With --no-auto-fixups: LOADER_SETUP_REQUIRED.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct stats {
	__u64 execs;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 0);
	__type(key, __u32);
	__type(value, struct stats);
} per_cpu_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 0);
} events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_execve")
int count_execs(void *ctx)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct stats *s = bpf_map_lookup_elem(&per_cpu_stats, &cpu);
	__u32 *slot;

	if (s)
		s->execs++;
	slot = bpf_ringbuf_reserve(&events, sizeof(*slot), 0);
	if (slot) {
		*slot = cpu;
		bpf_ringbuf_submit(slot, 0);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
