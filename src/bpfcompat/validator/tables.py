"""Numbers the kernel and libbpf speak in, and their names: helper ids (enum bpf_func_id),
map and program types, libbpf's private error codes. Both sides use them: the validator to
name what it saw, the host to check manifests and to word verdicts.
"""

from __future__ import annotations

import errno
import os

# enum bpf_func_id in __BPF_FUNC_MAPPER order (include/uapi/linux/bpf.h): index == id.
HELPER_NAMES = (
    "unspec", "map_lookup_elem", "map_update_elem", "map_delete_elem", "probe_read",
    "ktime_get_ns", "trace_printk", "get_prandom_u32", "get_smp_processor_id",
    "skb_store_bytes", "l3_csum_replace", "l4_csum_replace", "tail_call", "clone_redirect",
    "get_current_pid_tgid", "get_current_uid_gid", "get_current_comm", "get_cgroup_classid",
    "skb_vlan_push", "skb_vlan_pop", "skb_get_tunnel_key", "skb_set_tunnel_key",
    "perf_event_read", "redirect", "get_route_realm", "perf_event_output", "skb_load_bytes",
    "get_stackid", "csum_diff", "skb_get_tunnel_opt", "skb_set_tunnel_opt",
    "skb_change_proto", "skb_change_type", "skb_under_cgroup", "get_hash_recalc",
    "get_current_task", "probe_write_user", "current_task_under_cgroup", "skb_change_tail",
    "skb_pull_data", "csum_update", "set_hash_invalid", "get_numa_node_id", "skb_change_head",
    "xdp_adjust_head", "probe_read_str", "get_socket_cookie", "get_socket_uid", "set_hash",
    "setsockopt", "skb_adjust_room", "redirect_map", "sk_redirect_map", "sock_map_update",
    "xdp_adjust_meta", "perf_event_read_value", "perf_prog_read_value", "getsockopt",
    "override_return", "sock_ops_cb_flags_set", "msg_redirect_map", "msg_apply_bytes",
    "msg_cork_bytes", "msg_pull_data", "bind", "xdp_adjust_tail", "skb_get_xfrm_state",
    "get_stack", "skb_load_bytes_relative", "fib_lookup", "sock_hash_update",
    "msg_redirect_hash", "sk_redirect_hash", "lwt_push_encap", "lwt_seg6_store_bytes",
    "lwt_seg6_adjust_srh", "lwt_seg6_action", "rc_repeat", "rc_keydown", "skb_cgroup_id",
    "get_current_cgroup_id", "get_local_storage", "sk_select_reuseport",
    "skb_ancestor_cgroup_id", "sk_lookup_tcp", "sk_lookup_udp", "sk_release",
    "map_push_elem", "map_pop_elem", "map_peek_elem", "msg_push_data", "msg_pop_data",
    "rc_pointer_rel", "spin_lock", "spin_unlock", "sk_fullsock", "tcp_sock",
    "skb_ecn_set_ce", "get_listener_sock", "skc_lookup_tcp", "tcp_check_syncookie",
    "sysctl_get_name", "sysctl_get_current_value", "sysctl_get_new_value",
    "sysctl_set_new_value", "strtol", "strtoul", "sk_storage_get", "sk_storage_delete",
    "send_signal", "tcp_gen_syncookie", "skb_output", "probe_read_user", "probe_read_kernel",
    "probe_read_user_str", "probe_read_kernel_str", "tcp_send_ack", "send_signal_thread",
    "jiffies64", "read_branch_records", "get_ns_current_pid_tgid", "xdp_output",
    "get_netns_cookie", "get_current_ancestor_cgroup_id", "sk_assign", "ktime_get_boot_ns",
    "seq_printf", "seq_write", "sk_cgroup_id", "sk_ancestor_cgroup_id", "ringbuf_output",
    "ringbuf_reserve", "ringbuf_submit", "ringbuf_discard", "ringbuf_query", "csum_level",
    "skc_to_tcp6_sock", "skc_to_tcp_sock", "skc_to_tcp_timewait_sock",
    "skc_to_tcp_request_sock", "skc_to_udp6_sock", "get_task_stack", "load_hdr_opt",
    "store_hdr_opt", "reserve_hdr_opt", "inode_storage_get", "inode_storage_delete", "d_path",
    "copy_from_user", "snprintf_btf", "seq_printf_btf", "skb_cgroup_classid",
    "redirect_neigh", "per_cpu_ptr", "this_cpu_ptr", "redirect_peer", "task_storage_get",
    "task_storage_delete", "get_current_task_btf", "bprm_opts_set", "ktime_get_coarse_ns",
    "ima_inode_hash", "sock_from_file", "check_mtu", "for_each_map_elem", "snprintf",
    "sys_bpf", "btf_find_by_name_kind", "sys_close", "timer_init", "timer_set_callback",
    "timer_start", "timer_cancel", "get_func_ip", "get_attach_cookie", "task_pt_regs",
    "get_branch_snapshot", "trace_vprintk", "skc_to_unix_sock", "kallsyms_lookup_name",
    "find_vma", "loop", "strncmp", "get_func_arg", "get_func_ret", "get_func_arg_cnt",
    "get_retval", "set_retval", "xdp_get_buff_len", "xdp_load_bytes", "xdp_store_bytes",
    "copy_from_user_task", "skb_set_tstamp", "ima_file_hash", "kptr_xchg", "map_lookup_percpu_elem",
    "skc_to_mptcp_sock", "dynptr_from_mem", "ringbuf_reserve_dynptr", "ringbuf_submit_dynptr",
    "ringbuf_discard_dynptr", "dynptr_read", "dynptr_write", "dynptr_data",
    "tcp_raw_gen_syncookie_ipv4", "tcp_raw_gen_syncookie_ipv6", "tcp_raw_check_syncookie_ipv4",
    "tcp_raw_check_syncookie_ipv6", "ktime_get_tai_ns", "user_ringbuf_drain",
    "cgrp_storage_get", "cgrp_storage_delete",
)  # fmt: skip

# enum bpf_map_type / enum bpf_prog_type, named as libbpf's *_type_str() names them.
MAP_TYPE_NAMES = (
    "unspec", "hash", "array", "prog_array", "perf_event_array", "percpu_hash",
    "percpu_array", "stack_trace", "cgroup_array", "lru_hash", "lru_percpu_hash", "lpm_trie",
    "array_of_maps", "hash_of_maps", "devmap", "sockmap", "cpumap", "xskmap", "sockhash",
    "cgroup_storage", "reuseport_sockarray", "percpu_cgroup_storage", "queue", "stack",
    "sk_storage", "devmap_hash", "struct_ops", "ringbuf", "inode_storage", "task_storage",
    "bloom_filter", "user_ringbuf", "cgrp_storage", "arena", "insn_array", "rhash",
)  # fmt: skip

PROG_TYPE_NAMES = (
    "unspec", "socket_filter", "kprobe", "sched_cls", "sched_act", "tracepoint", "xdp",
    "perf_event", "cgroup_skb", "cgroup_sock", "lwt_in", "lwt_out", "lwt_xmit", "sock_ops",
    "sk_skb", "cgroup_device", "sk_msg", "raw_tracepoint", "cgroup_sock_addr",
    "lwt_seg6local", "lirc_mode2", "sk_reuseport", "flow_dissector", "cgroup_sysctl",
    "raw_tracepoint_writable", "cgroup_sockopt", "tracing", "struct_ops", "ext", "lsm",
    "sk_lookup", "syscall", "netfilter",
)  # fmt: skip

# enum bpf_attach_type, named as libbpf's libbpf_bpf_attach_type_str() names them.
ATTACH_TYPE_NAMES = (
    "cgroup_inet_ingress", "cgroup_inet_egress", "cgroup_inet_sock_create", "cgroup_sock_ops",
    "sk_skb_stream_parser", "sk_skb_stream_verdict", "cgroup_device", "sk_msg_verdict",
    "cgroup_inet4_bind", "cgroup_inet6_bind", "cgroup_inet4_connect", "cgroup_inet6_connect",
    "cgroup_inet4_post_bind", "cgroup_inet6_post_bind", "cgroup_udp4_sendmsg",
    "cgroup_udp6_sendmsg", "lirc_mode2", "flow_dissector", "cgroup_sysctl",
    "cgroup_udp4_recvmsg", "cgroup_udp6_recvmsg", "cgroup_getsockopt", "cgroup_setsockopt",
    "trace_raw_tp", "trace_fentry", "trace_fexit", "modify_return", "lsm_mac", "trace_iter",
    "cgroup_inet4_getpeername", "cgroup_inet6_getpeername", "cgroup_inet4_getsockname",
    "cgroup_inet6_getsockname", "xdp_devmap", "cgroup_inet_sock_release", "xdp_cpumap",
    "sk_lookup", "xdp", "sk_skb_verdict", "sk_reuseport_select", "sk_reuseport_select_or_migrate",
    "perf_event", "trace_kprobe_multi", "lsm_cgroup", "struct_ops", "netfilter", "tcx_ingress",
    "tcx_egress", "trace_uprobe_multi", "cgroup_unix_connect", "cgroup_unix_sendmsg",
    "cgroup_unix_recvmsg", "cgroup_unix_getpeername", "cgroup_unix_getsockname",
    "netkit_primary", "netkit_peer", "trace_kprobe_session",
)  # fmt: skip
BPF_PROG_TYPE_RAW_TRACEPOINT = 17

BPF_PROG_TYPE_SYSCALL = 31

BPF_MAP_TYPE_ARRAY_OF_MAPS = 12

BPF_MAP_TYPE_HASH_OF_MAPS = 13

BPF_MAP_TYPE_RINGBUF = 27

# Probed on every kernel whatever the artifact holds: the types whose absence explains
# the commonest "works on my kernel" failures.
FIXED_PROBE_MAP_TYPES = (
    "hash", "array", "percpu_array", "perf_event_array", "ringbuf", "bloom_filter",
    "task_storage", "cgrp_storage", "user_ringbuf",
)  # fmt: skip

FIXED_PROBE_PROG_TYPES = (
    "kprobe", "tracepoint", "raw_tracepoint", "perf_event", "tracing", "lsm", "xdp", "sched_cls",
)  # fmt: skip

# libbpf's own error codes (enum libbpf_errno, libbpf.h); 0.x returns them from loads.
LIBBPF_ERRNOS = {
    4000: ("LIBBPF_ERRNO__LIBELF", "Something wrong in libelf"),
    4001: ("LIBBPF_ERRNO__FORMAT", "BPF object format invalid"),
    4002: ("LIBBPF_ERRNO__KVERSION", "'version' section incorrect or lost"),
    4003: ("LIBBPF_ERRNO__ENDIAN", "Endian mismatch"),
    4004: ("LIBBPF_ERRNO__INTERNAL", "Internal error in libbpf"),
    4005: ("LIBBPF_ERRNO__RELOC", "Relocation failed"),
    4006: ("LIBBPF_ERRNO__LOAD", "Load program failure for unknown reason"),
    4007: ("LIBBPF_ERRNO__VERIFY", "Kernel verifier blocks program loading"),
    4008: ("LIBBPF_ERRNO__PROG2BIG", "Program too big"),
    4009: ("LIBBPF_ERRNO__KVER", "Incorrect kernel version"),
    4010: ("LIBBPF_ERRNO__PROGTYPE", "Kernel doesn't support this program type"),
    4011: ("LIBBPF_ERRNO__WRNGPID", "Wrong pid in netlink message"),
    4012: ("LIBBPF_ERRNO__INVSEQ", "Invalid netlink sequence"),
    4013: ("LIBBPF_ERRNO__NLPARSE", "Incorrect netlink message parsing"),
}

# Kernel-internal codes that leak to userspace from BPF syscalls (include/linux/errno.h).
# Python names 95 ENOTSUP; the kernel and libbpf say EOPNOTSUPP.
KERNEL_ERRNOS = {
    errno.EOPNOTSUPP: ("EOPNOTSUPP", os.strerror(errno.EOPNOTSUPP)),
    524: ("ENOTSUPP", "Operation is not supported"),
}


def helper_id_from_name(name: str) -> int | None:
    """Resolve a helper name as users write it ("bpf_loop", "loop", "BPF_FUNC_loop").

    The host side validates manifests with this, so both sides accept the same names.
    """
    key = name.strip()
    for prefix in ("BPF_FUNC_", "bpf_"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    key = key.lower()
    if key == "unspec" or key not in HELPER_NAMES:
        return None
    return HELPER_NAMES.index(key)


def helper_name_from_id(helper_id: int) -> str:
    """Render a helper id the way the verifier and the manifest do (``bpf_loop``)."""
    if 0 < helper_id < len(HELPER_NAMES):
        return "bpf_" + HELPER_NAMES[helper_id]
    return f"helper#{helper_id}"


def helper_entry_name(helper_id: int) -> str | None:
    """``bpf_<name>`` from the helper table, None for an id the table does not know."""
    return "bpf_" + HELPER_NAMES[helper_id] if 0 < helper_id < len(HELPER_NAMES) else None


def map_type_name(type_id: int) -> str:
    return MAP_TYPE_NAMES[type_id] if 0 <= type_id < len(MAP_TYPE_NAMES) else f"type#{type_id}"


def prog_type_name(type_id: int) -> str:
    return PROG_TYPE_NAMES[type_id] if 0 <= type_id < len(PROG_TYPE_NAMES) else f"type#{type_id}"


def errno_name(code: int) -> str | None:
    """Symbolic name of a positive error code, including libbpf's 4000+ codes."""
    if code <= 0:
        return None
    if code in LIBBPF_ERRNOS:
        return LIBBPF_ERRNOS[code][0]
    if code in KERNEL_ERRNOS:
        return KERNEL_ERRNOS[code][0]
    return errno.errorcode.get(code)


def error_text(code: int) -> str | None:
    """strerror() of a positive error code, with libbpf's and the kernel's private codes."""
    if code <= 0:
        return None
    if code in LIBBPF_ERRNOS:
        return LIBBPF_ERRNOS[code][1]
    if code in KERNEL_ERRNOS:
        return KERNEL_ERRNOS[code][1]
    return os.strerror(code)


_STRERROR_TO_ERRNO: dict[str, int] = {}


def errno_from_text(text: str) -> int | None:
    """Map a strerror() text back to its errno (libbpf 0.x reports VERIFY, not the errno)."""
    if not _STRERROR_TO_ERRNO:
        for code in range(1, 134):
            _STRERROR_TO_ERRNO.setdefault(os.strerror(code), code)
    return _STRERROR_TO_ERRNO.get(text.strip())


def type_id(names: tuple[str, ...], name: str) -> int | None:
    """The enum value of a type written as libbpf names it (``socket_filter``) or as the
    kernel's header does (``BPF_PROG_TYPE_SOCKET_FILTER``)."""
    key = name.strip().lower()
    for prefix in ("bpf_prog_type_", "bpf_map_type_", "bpf_"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    return names.index(key) if key in names and key != "unspec" else None
