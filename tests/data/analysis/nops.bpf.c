// SPDX-License-Identifier: GPL-2.0
/* A program of plain register moves: room for tests to patch in instruction encodings
 * this compiler cannot emit (ISA v4, load-acquire). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("socket")
int room(void *ctx)
{
	asm volatile("r1 = r1\n r1 = r1\n r1 = r1\n r1 = r1\n r1 = r1\n r1 = r1\n r1 = r1\n r1 = r1");
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
