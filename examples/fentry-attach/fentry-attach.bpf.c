// SPDX-License-Identifier: GPL-2.0
/*
 * fentry-attach: fentry and fexit programs on vfs_read, a function every
 * kernel of the matrix has, with both attachments required by the manifest.
 *
 * Loading needs the kernel's BTF (the target's BTF id); attaching needs a BPF
 * trampoline for the target. x86-64 has had trampolines since 5.5. Debian's
 * arm64 5.10 and 6.1 kernels load both programs but refuse the attachment
 * with ENOTSUPP (-524) from the trampoline update: arm64 could not attach
 * trampolines to kernel functions until ftrace direct calls came to arm64
 * (CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, set in the 6.12 arm64 config,
 * absent from the 6.1 one). A kernel without BTF cannot load them at all.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

__u64 read_calls;

SEC("fentry/vfs_read")
int BPF_PROG(read_entry)
{
	__sync_fetch_and_add(&read_calls, 1);
	return 0;
}

SEC("fexit/vfs_read")
int BPF_PROG(read_exit)
{
	__sync_fetch_and_add(&read_calls, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
