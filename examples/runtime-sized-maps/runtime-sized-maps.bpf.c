// SPDX-License-Identifier: GPL-2.0
/*
 * runtime-sized-maps: maps compiled with max_entries = 0 that the real
 * loader sizes before load (the Falco modern_bpf pattern):
 *
 *   auxiliary_maps  BPF_MAP_TYPE_PERCPU_ARRAY, one slot per possible CPU
 *   ringbuf_maps    BPF_MAP_TYPE_ARRAY_OF_MAPS, one ring buffer per CPU;
 *                   the inner-map template is a 0-byte RINGBUF too
 *
 * Loaded as-is, map creation fails with EINVAL on every kernel (the kernel
 * rejects max_entries == 0 for arrays and ring buffers): a loader-contract
 * problem, not a kernel one. manifest.yaml declares
 *   auxiliary_maps: max_entries: cpus
 *   ringbuf_maps:   max_entries: cpus, inner_ringbuf_bytes: 8388608
 * and with those fixups the object loads on every kernel (RINGBUF and
 * ringbuf-as-inner-map work since 5.8).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct aux_state {
	__u64 events;
	__u64 drops;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 0); /* sized by the loader: number of possible CPUs */
	__type(key, __u32);
	__type(value, struct aux_state);
} auxiliary_maps SEC(".maps");

struct ringbuf_map {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 0); /* replaced by the loader's inner map */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 0); /* sized by the loader: number of possible CPUs */
	__type(key, __u32);
	__array(values, struct ringbuf_map);
} ringbuf_maps SEC(".maps");

struct exec_event {
	__u32 tgid;
	__u32 cpu;
};

SEC("tracepoint/syscalls/sys_enter_execve")
int runtime_sized_execve(void *ctx)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct aux_state *aux;
	struct exec_event *e;
	void *rb;

	aux = bpf_map_lookup_elem(&auxiliary_maps, &cpu);
	if (!aux)
		return 0;
	aux->events++;

	/* Slots are filled by the userspace loader; empty slots are normal. */
	rb = bpf_map_lookup_elem(&ringbuf_maps, &cpu);
	if (!rb)
		return 0;

	e = bpf_ringbuf_reserve(rb, sizeof(*e), 0);
	if (!e) {
		aux->drops++;
		return 0;
	}
	e->tgid = (__u32)(bpf_get_current_pid_tgid() >> 32);
	e->cpu = cpu;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
