// SPDX-License-Identifier: GPL-2.0
/*
 * ringbuf: a BPF_MAP_TYPE_RINGBUF map (Linux 5.8) written from the
 * syscalls/sys_enter_execve tracepoint with bpf_ringbuf_reserve/submit
 * (helpers 131/132, also 5.8). Every kernel in the matrix is >= 5.10, so
 * this passes everywhere.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define TASK_COMM_LEN 16

struct exec_event {
	__u32 pid;
	__u32 tgid;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} exec_events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_execve")
int ringbuf_execve(void *ctx)
{
	struct exec_event *e;
	__u64 id;

	e = bpf_ringbuf_reserve(&exec_events, sizeof(*e), 0);
	if (!e)
		return 0;

	id = bpf_get_current_pid_tgid();
	e->pid = (__u32)id;
	e->tgid = (__u32)(id >> 32);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
