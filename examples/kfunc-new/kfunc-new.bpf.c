// SPDX-License-Identifier: GPL-2.0
/*
 * kfunc-new: calls the kfuncs bpf_task_from_pid() and bpf_task_release(),
 * both added in Linux 6.2 (bpf_task_release in "bpf: Add kfuncs for storing
 * struct task_struct * as a kptr", bpf_task_from_pid in commit 3f0e6f2b41d3,
 * both merged for 6.2). They are in the generic kfunc set registered for
 * BPF_PROG_TYPE_TRACING (among others), so a tp_btf program may call them;
 * a plain tracepoint program may not.
 *
 * 5.10 and 6.1: libbpf cannot resolve the extern against the kernel's BTF
 * ("extern (func ksym) 'bpf_task_from_pid': not found in kernel or module
 * BTFs"; bpf_object__load returns -EINVAL) and fails before any program
 * reaches the kernel -> UNSUPPORTED_KFUNC. 6.12, 7.2, lockdown 6.12: pass (tp_btf attaches via
 * a raw tracepoint link, no tracefs needed).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct task_struct {
	int pid;
	int tgid;
} __attribute__((preserve_access_index));

struct linux_binprm;

extern struct task_struct *bpf_task_from_pid(int pid) __ksym;
extern void bpf_task_release(struct task_struct *p) __ksym;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} found_tasks SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_lookup_task, struct task_struct *p, int old_pid,
	     struct linux_binprm *bprm)
{
	struct task_struct *task;
	__u32 key = 0;
	__u64 *found;

	task = bpf_task_from_pid(old_pid);
	if (!task)
		return 0;

	found = bpf_map_lookup_elem(&found_tasks, &key);
	if (found && task->tgid > 0)
		__sync_fetch_and_add(found, 1);

	bpf_task_release(task);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
