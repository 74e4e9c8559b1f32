// SPDX-License-Identifier: GPL-2.0
/* Section names other loaders (iproute2, Cilium, old samples) understand and libbpf 1.5
 * does not, next to a bare "classifier", which libbpf 1.5 still types. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("socket/tail")
int socket_tail(void *ctx)
{
	return 0;
}

SEC("sk_lookup/steer")
int steer(void *ctx)
{
	return 1;
}

SEC("classifier/ingress")
int tc_ingress(void *ctx)
{
	return 0;
}

SEC("from-netdev")
int cilium_style(void *ctx)
{
	return 0;
}

SEC("classifier")
int tc_plain(void *ctx)
{
	return 0;
}

SEC("weird_custom_name")
int unknown_kind(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
