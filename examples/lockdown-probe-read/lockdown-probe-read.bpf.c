// SPDX-License-Identifier: GPL-2.0
/*
 * lockdown-probe-read: a tracepoint program calling bpf_probe_read_kernel
 * (helper 113, Linux 5.5) to read current->tgid via CO-RE.
 *
 * Normal kernels: loads (attach is fine too). Lockdown 6.12
 * (lockdown=confidentiality): since 5.13 the helper's prototype is withheld
 * when security_locked_down(LOCKDOWN_BPF_READ_KERNEL) fails, so the verifier
 * says "program of this type cannot use helper bpf_probe_read_kernel#113"
 * (EINVAL). The words point at the helper; the cause is the lockdown policy
 * -> POLICY_DENIED there.
 *
 * A tracepoint (not a kprobe) is used so the object can also be loaded on
 * hosts without CONFIG_KPROBES.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct task_struct {
	int pid;
	int tgid;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s32);
} last_tgid SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_execve")
int read_current_tgid(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__s32 tgid = 0;
	__u32 key = 0;

	if (bpf_probe_read_kernel(&tgid, sizeof(tgid),
				  __builtin_preserve_access_index(&task->tgid)))
		return 0;
	bpf_map_update_elem(&last_tgid, &key, &tgid, BPF_ANY);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
