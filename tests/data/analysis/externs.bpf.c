// SPDX-License-Identifier: GPL-2.0
/* kconfig externs, typed and untyped ksyms, a __weak kfunc guarded at run time, and
 * const volatile configuration a loader sets before load (in .rodata and in a custom
 * .rodata.* section). */
#include <linux/bpf.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>

#ifndef bpf_ksym_exists
#define bpf_ksym_exists(sym) (!!(&(sym)))
#endif

extern unsigned int LINUX_KERNEL_VERSION __kconfig;
extern int CONFIG_HZ __kconfig;
extern bool CONFIG_BPF_JIT_ALWAYS_ON __kconfig __weak;

extern const int bpf_prog_active __ksym;
extern const void bpf_link_fops __ksym;

struct task_struct;
extern struct task_struct *bpf_task_from_pid(int pid) __ksym __weak;
extern void bpf_task_release(struct task_struct *p) __ksym __weak;

const volatile int target_pid = 42;
const volatile bool verbose = true;
const volatile char comm_filter[16] = "bash";
const volatile __u32 sample_rate SEC(".rodata.cfg") = 100;

__u64 hits;

SEC("tp_btf/sched_process_exec")
int observe(void *ctx)
{
	struct task_struct *task;

	if (LINUX_KERNEL_VERSION < 0x050a00 || CONFIG_HZ == 0)
		return 0;
	if (verbose && comm_filter[0] == 'b' && sample_rate)
		hits += (__u64)&bpf_prog_active + (__u64)&bpf_link_fops;
	if (bpf_ksym_exists(bpf_task_from_pid)) {
		task = bpf_task_from_pid(target_pid);
		if (task)
			bpf_task_release(task);
	}
	if (CONFIG_BPF_JIT_ALWAYS_ON)
		hits++;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
