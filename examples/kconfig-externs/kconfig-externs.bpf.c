// SPDX-License-Identifier: GPL-2.0
/*
 * kconfig-externs: values libbpf fills in at load time from the running kernel's
 * config (/boot/config-$(uname -r)) and release: an int (CONFIG_HZ), a tristate
 * (CONFIG_BPF_SYSCALL), a string (CONFIG_DEFAULT_HOSTNAME) and LINUX_KERNEL_VERSION.
 * On a real host the config file is there; each guest carries its booted kernel's own
 * config at that path, so these resolve as they would there: pass on every kernel.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

extern unsigned int LINUX_KERNEL_VERSION __kconfig;
extern int CONFIG_HZ __kconfig;
extern enum libbpf_tristate CONFIG_BPF_SYSCALL __kconfig;
extern char CONFIG_DEFAULT_HOSTNAME[16] __kconfig;

SEC("tracepoint/syscalls/sys_enter_execve")
int kconfig_execve(void *ctx)
{
	if (LINUX_KERNEL_VERSION < 0x050a00 || CONFIG_HZ <= 0)
		return 1;
	if (CONFIG_BPF_SYSCALL != TRI_YES || CONFIG_DEFAULT_HOSTNAME[0] == 0)
		return 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
