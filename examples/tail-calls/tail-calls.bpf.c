// SPDX-License-Identifier: GPL-2.0
/*
 * tail-calls: a BPF_MAP_TYPE_PROG_ARRAY whose slot 0 is initialised
 * statically in the object (libbpf fills it after loading both programs,
 * libbpf >= 0.7). The dispatcher tail-calls into the callee.
 *
 * Expected: pass everywhere (tail calls exist since 4.2); both programs load.
 * The dispatcher alone cannot ("failed to initialize slot": the callee has no
 * fd), so where a failing object's programs are loaded without the slot's
 * target, the validator reports them skipped, not failed.
 *
 * Both programs sit on the same tracepoint so both are ordinary, attachable
 * tracepoint programs (the callee also runs on its own; harmless).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} tail_hits SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_execve")
int tail_callee(void *ctx)
{
	__u32 key = 0;
	__u64 *hits = bpf_map_lookup_elem(&tail_hits, &key);

	if (hits)
		__sync_fetch_and_add(hits, 1);
	return 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 4);
	/* key_size, not __type(key): prog arrays take no BTF key/value types,
	 * and a BTF key would make libbpf log "Retrying without BTF". */
	__uint(key_size, sizeof(__u32));
	__array(values, int (void *));
} tail_progs SEC(".maps") = {
	.values = {
		[0] = (void *)&tail_callee,
	},
};

SEC("tracepoint/syscalls/sys_enter_execve")
int tail_dispatch(void *ctx)
{
	bpf_tail_call(ctx, &tail_progs, 0);
	/* Reached only if slot 0 is empty. */
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
