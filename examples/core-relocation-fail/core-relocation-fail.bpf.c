// SPDX-License-Identifier: GPL-2.0
/*
 * core-relocation-fail: a CO-RE field read of a struct that no kernel's BTF
 * contains. libbpf finds no candidate for "bpfcompat_no_such_type" (the
 * ___x flavour suffix is ignored when matching), poisons the instruction
 * (call unknown#195896080), the verifier rejects it, and libbpf rewrites the
 * log to "failed to resolve CO-RE relocation <byte_off> struct
 * bpfcompat_no_such_type___x.f (0:0 @ offset 0)".
 *
 * The read is a plain context load (no helper), so nothing here depends on
 * helpers the lockdown kernel removes: CORE_RELOCATION_FAILURE on every
 * kernel with BTF, lockdown included; MISSING_BTF on the kernel built
 * without it, unless its BTF is given as a file (--btf).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct bpfcompat_no_such_type___x {
	int f;
} __attribute__((preserve_access_index));

SEC("tracepoint/syscalls/sys_enter_execve")
int read_missing_type(void *ctx)
{
	struct bpfcompat_no_such_type___x *p = ctx;

	return p->f;
}

char LICENSE[] SEC("license") = "GPL";
