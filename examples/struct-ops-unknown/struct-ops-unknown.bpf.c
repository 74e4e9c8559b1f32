// SPDX-License-Identifier: GPL-2.0
/*
 * struct-ops-unknown: a struct_ops map implementing a struct no kernel's vmlinux has
 * (the kind a kernel module defines and its loader loads first). libbpf cannot find
 * the struct in kernel BTF: LOADER_SETUP_REQUIRED, naming the struct and saying that
 * no kernel of the matrix provides it, never VERIFIER_REJECTION or UNKNOWN.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct bpfcompat_demo_ops {
	int (*handle)(int value);
	char name[16];
};

SEC("struct_ops/demo_handle")
int demo_handle(unsigned long long *ctx)
{
	return 0;
}

SEC(".struct_ops")
struct bpfcompat_demo_ops demo_ops = {
	.handle = (void *)demo_handle,
	.name = "bpfcompat_demo",
};

char LICENSE[] SEC("license") = "GPL";
