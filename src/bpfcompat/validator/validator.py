"""bpfcompat in-guest validator: one BPF object, one kernel, one JSON result (validator.v0.4).

This file is copied alone into every guest and run as ``python3 validator.py --artifact X
--out Y``. It therefore uses only the standard library and ctypes (the guest's libbpf is
the loader under test), keeps to syntax that runs on Python 3.9 through 3.14, and imports
nothing heavy up front: guests run under software emulation where every import and every
syscall costs ~10x.

Order of work (each step timed in ``timings``): host facts (and the kernel log position)
-> BTF and lockdown facts -> capability probes (bpftool, cached per boot; libbpf type
probes) -> open -> discovery (with the helpers each program's instructions call) -> helper
probes for each program's own type (cached per boot) -> isolated per-program load probes ->
variant selection -> map fixups -> whole-object load -> auto-attach -> functional tests
while links are alive -> lockdown lines the kernel logged meanwhile -> JSON + libbpf log.

The validator never dies with a traceback: a step that raises is recorded in ``errors``
and the run goes on. Exit codes: 0 pass, 2 fail (the kernel rejected the object, an
attach the user requires, or a required functional test), 1 usage or output error, or an
internal error that makes the result inconclusive (libbpf missing, a step that crashed).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import mmap
import os
import re
import struct
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any, Callable

VALIDATOR_VERSION = "0.4.0"
SCHEMA_VERSION = "validator.v0.4"
PROG = "bpfcompat-validator"

EXIT_PASS = 0
EXIT_ERROR = 1
EXIT_FAIL = 2

ATTACH_MODES = ("disabled", "best-effort", "required")

# Bounds: every log the validator keeps is capped so that a 100 MB verifier log cannot
# exhaust a 512 MB guest or produce a result the host cannot parse.
LOG_FILE_CHARS = 4 << 20  # libbpf.log keeps the last 4 MiB of messages
LOG_JSON_CHARS = 256 << 10  # logs.libbpf keeps the last 256 KiB
LOG_MESSAGE_CHARS = 512 << 10  # one libbpf message (a verifier dump) is cut to this
LOG_MESSAGE_HEAD = 16 << 10  # ... keeping this much of its head and the rest of its tail
PROBE_LOG_TAIL = 8 << 10  # discovery.programs[].load_log
# Each isolated probe reopens the whole object, so probing n programs costs O(n^2):
# 2000 programs took 45 s natively and over the 90 s job limit under TCG. Above this
# many programs the whole-object load alone decides (and names the failing program).
MAX_ISOLATED_PROBES = 128
VERIFIER_BUF_BYTES = 16 << 20  # libbpf's own first verifier buffer size (BPF_LOG_BUF_SIZE)
VERIFIER_FILE_CHARS = 1 << 20  # per-program verifier log file in --log-dir
OUTPUT_TAIL = 4 << 10  # functional test stdout/stderr tails
WARN_TAIL = 10  # libbpf warnings attached to a failing load/open/attach
BPFTOOL_TIMEOUT = 120.0
CACHE_DIR = "/tmp/bpfcompat-validator-cache"
HOST_KEYS = (
    "sysname", "nodename", "release", "version", "machine", "python_version", "boot_id",
    "cmdline", "possible_cpus", "libbpf_version", "libbpf_soname", "libbpf_path",
    "memlock_raised", "memlock_limit",
)  # fmt: skip

# Steps whose crash leaves the kernel verdict unknown: their errors make the exit code 1.
CORE_STEPS = ("libbpf", "open", "discovery", "variants", "fixups", "load", "attach", "functional")

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

_FAILED_PROG_RES = (
    re.compile(r"prog '([^']+)': (?:BPF program load failed|failed to load)"),
    re.compile(r"failed to load program '([^']+)'"),
)
_FAILED_MAP_RES = (
    re.compile(r"map '([^']+)': failed to (?:create|initialize slot)"),
    re.compile(r"Error in bpf_create_map_xattr\(([^)]+)\)"),
)
_LOAD_ERRNO_TEXT_RE = re.compile(r"(?:BPF program load failed|load bpf program failed): (.+)")
_SLOT_INIT_TEXT = "failed to initialize slot"

# struct bpf_insn (include/uapi/linux/bpf.h): code u8, dst_reg:4 src_reg:4, off s16, imm s32.
BPF_INSN_SIZE = 8
BPF_CALL_CODE = 0x85  # BPF_JMP | BPF_CALL
BPF_PSEUDO_CALL = 1  # src_reg of a bpf-to-bpf (subprogram) call
BPF_PSEUDO_KFUNC_CALL = 2  # src_reg of a kfunc call, imm = the kfunc's kernel BTF id
# The verifier's words for "this program type may not call this helper" since 6.10; libbpf
# before 1.5 does not know them and reports such helpers as supported (libbpf_probes.c).
HELPER_REFUSED_TEXT = b"program of this type cannot use helper "
HELPER_PROBE_CACHE_REV = "1"  # bump when the meaning of a cached helper probe changes
# bpf_prog_load_opts for bpf_prog_load(): unchanged from libbpf 0.6 up to log_buf.
_PROG_LOAD_OPTS_SIZE = 104
# What probe_prog_load() in libbpf sets so that these program types load at all.
_PROBE_ATTACH_TYPES = {18: 10, 20: 16, 25: 21, 30: 36, 32: 45}  # type -> expected attach
BPF_F_SLEEPABLE = 1 << 4

# Kernel log: lockdown refusals (security/lockdown/lockdown.c lockdown_is_locked_down(),
# "Lockdown: <comm>: <what> is restricted; see man kernel_lockdown.7"; before 5.4 the
# distribution patches printed it without the comm). Rate-limited by the kernel.
KMSG_PATH = "/dev/kmsg"
KMSG_MAX_RECORDS = 10000  # records read after the run, at most
KMSG_RECORD_BYTES = 16 << 10
LOCKDOWN_DENIALS_MAX = 32
_LOCKDOWN_DENIAL_RE = re.compile(r"^Lockdown: .+ is restricted; see man kernel_lockdown\.7")


# --- small pure helpers ---------------------------------------------------------------------


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


def decode_calls(raw: bytes) -> tuple[list[int], list[int]]:
    """(helper ids, kfunc BTF ids) called by BPF instructions, deduplicated, in order.

    A helper call is ``BPF_JMP|BPF_CALL`` with src_reg 0 and the helper id in imm; src_reg 1
    is a call to a subprogram and src_reg 2 a kfunc call (imm is its BTF id once libbpf
    has relocated it). The code bytes are scanned with bytes.find, not insn by insn: a
    program may have a million instructions and this runs under emulation.
    """
    helpers: dict[int, None] = {}
    kfuncs: dict[int, None] = {}
    count = len(raw) // BPF_INSN_SIZE
    codes = raw[: count * BPF_INSN_SIZE : BPF_INSN_SIZE]
    little = sys.byteorder == "little"
    index = codes.find(BPF_CALL_CODE)
    while index >= 0:
        _, regs, _, imm = struct.unpack_from("=BBhi", raw, index * BPF_INSN_SIZE)
        src_reg = regs >> 4 if little else regs & 0x0F
        if src_reg == 0:
            helpers[imm] = None
        elif src_reg == BPF_PSEUDO_KFUNC_CALL:
            kfuncs[imm] = None
        index = codes.find(BPF_CALL_CODE, index + 1)
    return list(helpers), list(kfuncs)


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


def tail_text(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text``, starting at a line boundary."""
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    newline = cut.find("\n")
    if 0 <= newline < len(cut) - 1:
        cut = cut[newline + 1 :]
    return cut


def decode(raw: bytes | None) -> str:
    """Bytes from C (names, logs) to text that always serialises as valid JSON."""
    return raw.decode("utf-8", "replace") if raw else ""


def utc_timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%03dZ" % int(now % 1 * 1000)


def read_text(path: str, limit: int = 1 << 16) -> str | None:
    """Read a small /proc or /sys file; None if it is not there or not readable."""
    try:
        with open(path, "rb") as handle:
            return decode(handle.read(limit))
    except OSError:
        return None


def describe_exception(exc: BaseException) -> str:
    """One line naming the exception and the innermost frame it came from."""
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" (at {tb.tb_frame.f_code.co_name}:{tb.tb_lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


# --- command line ---------------------------------------------------------------------------


class UsageError(Exception):
    """A bad command line or input file: one line on stderr, exit 1, no result written."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() prints exactly one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {value!r} (use true/false/1/0/yes/no)")


def _split_assignment(value: str, what: str) -> tuple[str, str]:
    name, sep, rhs = value.partition("=")
    name, rhs = name.strip(), rhs.strip()
    if not sep or not name or not rhs:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: expected {what}")
    return name, rhs


def _positive_int(text: str, limit: int) -> int | None:
    if not text.isdigit():
        return None
    number = int(text)
    return number if 0 < number <= limit else None


def parse_map_max_entries(value: str) -> tuple[str, str]:
    """``<map>=<n|cpus>``; the raw right-hand side is kept (the result reports it)."""
    name, rhs = _split_assignment(value, "<map>=<n|cpus>")
    if rhs.lower() == "cpus":
        return name, "cpus"
    if _positive_int(rhs, 0xFFFFFFFF) is None:
        raise argparse.ArgumentTypeError(
            f"invalid value {value!r}: max entries must be 'cpus' or an integer 1..4294967295"
        )
    return name, str(int(rhs))


def parse_inner_ringbuf(value: str) -> tuple[str, int]:
    """``<map>=<bytes>``: the size of the BPF_MAP_TYPE_RINGBUF inner-map prototype."""
    name, rhs = _split_assignment(value, "<map>=<bytes>")
    size = _positive_int(rhs, 0xFFFFFFFF)
    if size is None:
        raise argparse.ArgumentTypeError(
            f"invalid value {value!r}: bytes must be an integer 1..4294967295"
        )
    return name, size


def resolve_helper(token: str) -> tuple[str | None, int]:
    """A variant's helper: decimal id or known name; 0 means unconditional."""
    token = token.strip()
    if token.isdigit():
        helper_id = int(token)
        if helper_id >= 1 << 31:
            raise ValueError(f"helper id {token} out of range")
        return (helper_name_from_id(helper_id) if helper_id else None), helper_id
    helper_id = helper_id_from_name(token)
    if helper_id is None:
        raise ValueError(f"unknown helper {token!r}")
    return helper_name_from_id(helper_id), helper_id


def parse_prog_variants(value: str) -> dict[str, Any]:
    """``<group>=<prog>:<helper>,...``; an entry without a helper (or ``:0``) is the fallback."""
    group, rhs = _split_assignment(value, "<group>=<prog>[:<helper>],...")
    variants: list[dict[str, Any]] = []
    seen: set[str] = set()
    for raw in rhs.split(","):
        prog, _, helper = raw.strip().partition(":")
        prog = prog.strip()
        if not prog:
            raise argparse.ArgumentTypeError(f"invalid value {value!r}: empty program name")
        if prog in seen:
            raise argparse.ArgumentTypeError(
                f"invalid value {value!r}: program {prog!r} listed twice"
            )
        seen.add(prog)
        try:
            name, helper_id = resolve_helper(helper) if helper.strip() else (None, 0)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid value {value!r}: {exc}") from None
        variants.append({"program": prog, "helper": name, "helper_id": helper_id})
    return {"group": group, "variants": variants, "raw": value}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Open, probe, load, attach and exercise one compiled BPF object on the "
        "running kernel and write a validator.v0.4 JSON result.",
        epilog="Exit status: 0 pass, 2 fail, 1 usage/output/internal error.",
    )
    parser.add_argument("--artifact", required=True, metavar="PATH", help="the .bpf.o to validate")
    parser.add_argument(
        "--out", required=True, metavar="PATH", help="where to write the result JSON"
    )
    parser.add_argument(
        "--manifest", metavar="PATH", help="JSON manifest (programs[].attach.required)"
    )
    parser.add_argument("--functional-plan", metavar="PATH", help="JSON plan of functional tests")
    parser.add_argument(
        "--log-dir", metavar="DIR", help="directory for libbpf.log and verifier logs"
    )
    parser.add_argument(
        "--attach-mode",
        choices=ATTACH_MODES,
        default="best-effort",
        help="disabled: no attach; best-effort: failures warn; required: failures fail",
    )
    parser.add_argument(
        "--probe-features",
        type=parse_bool,
        default=True,
        metavar="<bool>",
        help="run capability probes and isolated per-program load probes (default true)",
    )
    parser.add_argument(
        "--set-map-max-entries",
        type=parse_map_max_entries,
        action="append",
        default=[],
        metavar="<map>=<n|cpus>",
        help="size a map before load (repeatable)",
    )
    parser.add_argument(
        "--set-map-inner-ringbuf",
        type=parse_inner_ringbuf,
        action="append",
        default=[],
        metavar="<map>=<bytes>",
        help="install a RINGBUF of <bytes> as a map-in-map's inner map (repeatable)",
    )
    parser.add_argument(
        "--prog-variants",
        type=parse_prog_variants,
        action="append",
        default=[],
        metavar="<group>=<prog>:<helper_id>,...",
        help="keep the first program whose helper the kernel supports (repeatable)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {VALIDATOR_VERSION}")
    return parser


def load_manifest(path: str) -> list[dict[str, Any]]:
    """The manifest's ``programs`` list; other manifest keys are the host's business."""
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
    except OSError as exc:
        raise UsageError(f"--manifest {path!r}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"--manifest {path!r}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--manifest {path!r}: top level must be an object")
    programs = data.get("programs") or []
    if not isinstance(programs, list):
        raise UsageError(f"--manifest {path!r}: programs must be a list")
    result: list[dict[str, Any]] = []
    for index, entry in enumerate(programs):
        where = f"--manifest {path!r}: programs[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UsageError(f"{where}: needs a string name")
        attach = entry.get("attach") or {}
        required = attach.get("required", False) if isinstance(attach, dict) else None
        if not isinstance(required, bool):
            raise UsageError(f"{where}: attach.required must be a boolean")
        result.append({"name": entry["name"], "attach_required": required})
    return result


_PLAN_TEST_KEYS = {
    "name": (str,),
    "command": (str,),
    "required": (bool,),
    "timeout_seconds": (int, float),
    "expect_exit_code": (int,),
    "expect_stdout_contains": (str, type(None)),
    "expect_stderr_contains": (str, type(None)),
}


def parse_functional_plan(data: object) -> list[dict[str, Any]]:
    """Strictly check a plan: unknown keys or wrong types are errors (ValueError)."""
    if not isinstance(data, dict):
        raise ValueError("plan must be a JSON object")
    unknown = sorted(set(data) - {"tests"})
    if unknown:
        raise ValueError(f"unknown top-level key(s): {', '.join(unknown)}")
    tests = data.get("tests")
    if not isinstance(tests, list):
        raise ValueError("'tests' must be a list")
    parsed: list[dict[str, Any]] = []
    names: set[str] = set()
    for index, test in enumerate(tests):
        where = f"tests[{index}]"
        if not isinstance(test, dict):
            raise ValueError(f"{where} must be an object")
        for key, value in test.items():
            if key not in _PLAN_TEST_KEYS:
                raise ValueError(f"{where}: unknown key {key!r}")
            allowed = _PLAN_TEST_KEYS[key]
            if isinstance(value, bool) and bool not in allowed:
                raise ValueError(f"{where}.{key}: wrong type bool")
            if not isinstance(value, allowed):
                raise ValueError(f"{where}.{key}: wrong type {type(value).__name__}")
        for key in ("name", "command"):
            if not test.get(key, "").strip():
                raise ValueError(f"{where}: {key} is required and must be non-empty")
        timeout = float(test.get("timeout_seconds", 10.0))
        if not 0 < timeout <= 3600:
            raise ValueError(f"{where}.timeout_seconds: must be in (0, 3600]")
        if test["name"] in names:
            raise ValueError(f"{where}: duplicate test name {test['name']!r}")
        names.add(test["name"])
        parsed.append(
            {
                "name": test["name"],
                "command": test["command"],
                "required": test.get("required", True),
                "timeout_seconds": timeout,
                "expect_exit_code": test.get("expect_exit_code", 0),
                "expect_stdout_contains": test.get("expect_stdout_contains"),
                "expect_stderr_contains": test.get("expect_stderr_contains"),
            }
        )
    return parsed


def load_functional_plan(path: str) -> tuple[list[dict[str, Any]], str | None]:
    """(tests, None) or ([], error): a bad plan becomes a failing test, not a usage error."""
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
        return parse_functional_plan(data), None
    except OSError as exc:
        return [], f"cannot read functional plan {path!r}: {exc.strerror}"
    except ValueError as exc:
        return [], f"invalid functional plan {path!r}: {exc}"


class Config:
    """The validated command line."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.artifact: str = args.artifact
        self.out: str = args.out
        self.manifest_path: str | None = args.manifest
        self.plan_path: str | None = args.functional_plan
        self.log_dir: str | None = args.log_dir
        self.attach_mode: str = args.attach_mode
        self.probe_features: bool = args.probe_features
        self.manifest_programs: list[dict[str, Any]] = []
        # map name -> fixup request, in first-mention order
        self.fixups: dict[str, dict[str, Any]] = {}
        self.variant_groups: list[dict[str, Any]] = args.prog_variants
        self.raw_max_entries = [f"{n}={v}" for n, v in args.set_map_max_entries]
        self.raw_inner_ringbuf = [f"{n}={v}" for n, v in args.set_map_inner_ringbuf]
        for name, requested in args.set_map_max_entries:
            entry = self.fixups.setdefault(name, {"requested": None, "inner": None})
            if entry["requested"] is not None:
                raise UsageError(f"argument --set-map-max-entries: map {name!r} given twice")
            entry["requested"] = requested
        for name, size in args.set_map_inner_ringbuf:
            entry = self.fixups.setdefault(name, {"requested": None, "inner": None})
            if entry["inner"] is not None:
                raise UsageError(f"argument --set-map-inner-ringbuf: map {name!r} given twice")
            entry["inner"] = size
        groups = [g["group"] for g in self.variant_groups]
        for group in groups:
            if groups.count(group) > 1:
                raise UsageError(f"argument --prog-variants: group {group!r} given twice")


def parse_args(argv: list[str] | None) -> Config:
    """Parse and check the command line; UsageError for anything the run cannot start with."""
    args = build_parser().parse_args(argv)
    config = Config(args)
    if not os.path.isfile(config.artifact):
        raise UsageError(f"--artifact {config.artifact!r}: no such file")
    out_dir = os.path.dirname(os.path.abspath(config.out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"--out {config.out!r}: directory {out_dir!r} does not exist")
    if config.log_dir:
        try:
            os.makedirs(config.log_dir, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--log-dir {config.log_dir!r}: {exc.strerror}") from None
    if config.manifest_path:
        config.manifest_programs = load_manifest(config.manifest_path)
    return config


# --- ELF --------------------------------------------------------------------------------------

SHT_NULL = 0
SHT_NOBITS = 8
EM_BPF = 247
ET_REL = 1
MAX_SECTIONS_LISTED = 1024


def inspect_elf(path: str) -> dict[str, Any]:
    """Parse the artifact's ELF header and section table with struct.

    libbpf (through libelf) is not handed a structurally broken file: a corrupt artifact
    must produce a clear failing result, and a crash in C would produce no result at all.
    """
    info: dict[str, Any] = {
        "size": None,
        "elf_valid": False,
        "elf_error": None,
        "section_count": 0,
        "sections": [],
        "has_btf": False,
        "has_btf_ext": False,
    }
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        info["elf_error"] = f"cannot read artifact: {exc.strerror}"
        return info
    info["size"] = len(data)
    try:
        names = _elf_section_names(data)
    except (ValueError, struct.error) as exc:
        info["elf_error"] = str(exc)
        return info
    info["elf_valid"] = True
    info["section_count"] = len(names)
    info["sections"] = names[:MAX_SECTIONS_LISTED]
    info["has_btf"] = ".BTF" in names
    info["has_btf_ext"] = ".BTF.ext" in names
    return info


def _elf_section_names(data: bytes) -> list[str]:
    return [name for name, _type, _offset, _size in elf_sections(data)]


def elf_sections(data: bytes) -> list[tuple[str, int, int, int]]:
    """(name, sh_type, offset, size) of every section but the null one; ValueError if corrupt."""
    size = len(data)
    if size < 16 or data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file (no ELF magic)")
    if data[4] != 2:
        raise ValueError(f"not a 64-bit ELF (EI_CLASS={data[4]}); BPF objects are ELF64")
    if data[5] not in (1, 2):
        raise ValueError(f"invalid ELF data encoding (EI_DATA={data[5]})")
    end = "<" if data[5] == 1 else ">"
    if size < 64:
        raise ValueError(f"truncated ELF header ({size} bytes, need 64)")
    header = struct.unpack_from(end + "HHIQQQIHHHHHH", data, 16)
    e_type, e_machine, e_shoff, e_shentsize, e_shnum, e_shstrndx = (
        header[0],
        header[1],
        header[5],
        header[10],
        header[11],
        header[12],
    )
    if e_type != ET_REL:
        raise ValueError(f"ELF type {e_type} is not a relocatable object (ET_REL)")
    if e_machine not in (0, EM_BPF):
        raise ValueError(f"ELF machine {e_machine} is not BPF (EM_BPF={EM_BPF})")
    if e_shoff == 0:
        raise ValueError("ELF has no section header table")
    if e_shentsize != 64:
        raise ValueError(f"unexpected ELF section header size {e_shentsize}")
    if e_shoff + 64 > size:
        raise ValueError(
            f"truncated ELF: section headers at offset {e_shoff} lie beyond the end "
            f"of the file ({size} bytes)"
        )
    sh_fmt = end + "IIQQQQIIQQ"
    first = struct.unpack_from(sh_fmt, data, e_shoff)
    shnum = e_shnum or first[5]  # extended numbering: count in section 0's sh_size
    shstrndx = first[6] if e_shstrndx == 0xFFFF else e_shstrndx
    if e_shoff + shnum * 64 > size:
        raise ValueError(
            f"truncated ELF: {shnum} section headers at offset {e_shoff} do not fit in {size} bytes"
        )
    headers = [struct.unpack_from(sh_fmt, data, e_shoff + i * 64) for i in range(shnum)]
    if not 0 < shstrndx < shnum:
        raise ValueError(f"invalid section name table index {shstrndx}")
    str_off, str_size = headers[shstrndx][4], headers[shstrndx][5]
    if str_off + str_size > size:
        raise ValueError("truncated ELF: section name table lies beyond the end of the file")
    strtab = data[str_off : str_off + str_size]
    sections: list[tuple[str, int, int, int]] = []
    for index, (name_off, sh_type, _f, _a, offset, sec_size, *_rest) in enumerate(headers):
        if name_off >= max(str_size, 1) and index:
            raise ValueError(f"section #{index} has a name offset outside the name table")
        nul = strtab.find(b"\0", name_off)
        name = decode(strtab[name_off : nul if nul >= 0 else str_size])
        if sh_type not in (SHT_NULL, SHT_NOBITS) and offset + sec_size > size:
            raise ValueError(
                f"truncated ELF: section #{index} {name!r} ({sec_size} bytes at offset "
                f"{offset}) extends beyond the end of the file ({size} bytes)"
            )
        if index:
            sections.append((name, sh_type, offset, sec_size))
    return sections


# --- libbpf through ctypes -------------------------------------------------------------------

_PTR_SPAN = 1 << (ctypes.sizeof(ctypes.c_void_p) * 8)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_c = ctypes


def _ptr_result(value: int | None) -> tuple[int | None, int]:
    """Decode a libbpf pointer return into (pointer, 0) or (None, -errno).

    libbpf 1.x returns NULL and sets errno; 0.x returns ERR_PTR(-errno) unless strict mode
    is on. Decoding both here avoids switching global strict mode on old libbpf, which
    would also change how it parses legacy objects.
    """
    if not value:
        return None, -(ctypes.get_errno() or errno.EINVAL)
    if value >= _PTR_SPAN - 4095:
        return None, value - _PTR_SPAN
    return value, 0


def _int_result(value: int) -> int:
    """libbpf int returns: 1.x gives -errno; 0.x sometimes -1 with errno set."""
    if value == -1:
        return -(ctypes.get_errno() or 1)
    return value


class Libbpf:
    """The system libbpf with each symbol resolved once and fallbacks for old releases.

    Debian 11 ships libbpf 0.3, which lacks bpf_object__next_program, bpf_program__type,
    bpf_program__set_log_buf, libbpf_probe_bpf_* and bpf_map_create; each method below
    uses the newest API present and the old one otherwise, and says None when neither is.
    """

    def __init__(self, lib: ctypes.CDLL, soname: str) -> None:
        self.lib = lib
        self.soname = soname
        self._syms: dict[str, Any] = {}
        self._old_helper_probe: bool | None = None

    @classmethod
    def load(cls) -> tuple[Libbpf | None, str | None]:
        names = [os.environ.get("BPFCOMPAT_LIBBPF", ""), "libbpf.so.1", "libbpf.so.0"]
        problems = []
        for name in filter(None, names):
            try:
                return cls(ctypes.CDLL(name, use_errno=True), name), None
            except OSError as exc:
                problems.append(str(exc))
        return None, "libbpf not found: " + "; ".join(problems)

    def sym(self, name: str, restype: Any, *argtypes: Any) -> Any:
        """The named function with its prototype set, or None if this libbpf lacks it."""
        if name not in self._syms:
            try:
                func = getattr(self.lib, name)
            except AttributeError:
                func = None
            else:
                func.restype = restype
                func.argtypes = list(argtypes)
            self._syms[name] = func
        return self._syms[name]

    def has(self, name: str) -> bool:
        return hasattr(self.lib, name)

    # -- version and global state
    def version(self) -> dict[str, Any]:
        major = self.sym("libbpf_major_version", _c.c_uint32)
        minor = self.sym("libbpf_minor_version", _c.c_uint32)
        info: dict[str, Any] = {"soname": self.soname, "path": None, "version": None}
        if major and minor:
            info["major"], info["minor"] = int(major()), int(minor())
            info["version"] = f"{info['major']}.{info['minor']}"
        maps = read_text("/proc/self/maps", 1 << 20) or ""
        for line in maps.splitlines():
            fields = line.split(None, 5)
            path = fields[5].strip() if len(fields) == 6 else ""
            base = os.path.basename(path)
            if base.startswith("libbpf.so"):
                info["path"] = path
                full = base[len("libbpf.so.") :]
                if full and all(part.isdigit() for part in full.split(".")):
                    info["version"] = full  # the file name has the patch level too
                break
        if "major" not in info and info["version"]:
            parts = info["version"].split(".")
            info["major"], info["minor"] = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        return info

    def set_print(self, callback: Any) -> int | None:
        func = self.sym("libbpf_set_print", _c.c_void_p, _c.c_void_p)
        return func(callback) if func else None

    def num_possible_cpus(self) -> int:
        func = self.sym("libbpf_num_possible_cpus", _c.c_int)
        return int(func()) if func else -errno.ENOSYS

    # -- objects
    def open_file(self, path: str) -> tuple[int | None, int]:
        func = self.sym("bpf_object__open_file", _c.c_void_p, _c.c_char_p, _c.c_void_p)
        if not func:
            return None, -errno.ENOSYS
        return _ptr_result(func(os.fsencode(path), None))

    def load_object(self, obj: int) -> int:
        func = self.sym("bpf_object__load", _c.c_int, _c.c_void_p)
        return _int_result(func(obj))

    def close(self, obj: int) -> None:
        func = self.sym("bpf_object__close", None, _c.c_void_p)
        if func and obj:
            func(obj)

    def _walk(self, obj: int, new: str, old: str) -> list[int]:
        nxt = self.sym(new, _c.c_void_p, _c.c_void_p, _c.c_void_p)
        items: list[int] = []
        cur = None
        if nxt:
            while True:
                cur = nxt(obj, cur)
                if not cur:
                    return items
                items.append(cur)
        nxt = self.sym(old, _c.c_void_p, _c.c_void_p, _c.c_void_p)
        while nxt:  # 0.x argument order is (prev, obj)
            cur = nxt(cur, obj)
            if not cur:
                break
            items.append(cur)
        return items

    def programs(self, obj: int) -> list[int]:
        return self._walk(obj, "bpf_object__next_program", "bpf_program__next")

    def maps(self, obj: int) -> list[int]:
        return self._walk(obj, "bpf_object__next_map", "bpf_map__next")

    # -- programs
    def prog_name(self, prog: int) -> str:
        return decode(self.sym("bpf_program__name", _c.c_char_p, _c.c_void_p)(prog))

    def prog_section(self, prog: int) -> str:
        func = self.sym("bpf_program__section_name", _c.c_char_p, _c.c_void_p)
        if func:
            return decode(func(prog))
        func = self.sym("bpf_program__title", _c.c_char_p, _c.c_void_p, _c.c_bool)
        return decode(func(prog, False)) if func else ""

    def prog_type(self, prog: int) -> int:
        func = self.sym("bpf_program__type", _c.c_int, _c.c_void_p) or self.sym(
            "bpf_program__get_type", _c.c_int, _c.c_void_p
        )
        return int(func(prog)) if func else -1

    def prog_autoload(self, prog: int) -> bool:
        func = self.sym("bpf_program__autoload", _c.c_bool, _c.c_void_p)
        return bool(func(prog)) if func else True

    def set_autoload(self, prog: int, autoload: bool) -> int:
        func = self.sym("bpf_program__set_autoload", _c.c_int, _c.c_void_p, _c.c_bool)
        return _int_result(func(prog, autoload)) if func else -errno.ENOSYS

    def prog_insns(self, prog: int) -> bytes | None:
        """The program's instructions as libbpf holds them now (None before libbpf 0.6)."""
        insns = self.sym("bpf_program__insns", _c.c_void_p, _c.c_void_p)
        count = self.sym("bpf_program__insn_cnt", _c.c_size_t, _c.c_void_p)
        if not insns or not count:
            return None
        ptr, total = insns(prog), int(count(prog))
        return ctypes.string_at(ptr, total * BPF_INSN_SIZE) if ptr and total > 0 else b""

    def set_log_buf(self, prog: int, buf: Any, size: int) -> bool:
        func = self.sym("bpf_program__set_log_buf", _c.c_int, _c.c_void_p, _c.c_void_p, _c.c_size_t)
        return bool(func) and func(prog, _c.addressof(buf), size) == 0

    def attach(self, prog: int) -> tuple[int | None, int]:
        func = self.sym("bpf_program__attach", _c.c_void_p, _c.c_void_p)
        if not func:
            return None, -errno.ENOSYS
        return _ptr_result(func(prog))

    def destroy_link(self, link: int) -> None:
        func = self.sym("bpf_link__destroy", _c.c_int, _c.c_void_p)
        if func:
            func(link)

    # -- maps
    def map_name(self, bpf_map: int) -> str:
        return decode(self.sym("bpf_map__name", _c.c_char_p, _c.c_void_p)(bpf_map))

    def map_type(self, bpf_map: int) -> int:
        func = self.sym("bpf_map__type", _c.c_int, _c.c_void_p)
        return int(func(bpf_map)) if func else -1

    def map_max_entries(self, bpf_map: int) -> int | None:
        func = self.sym("bpf_map__max_entries", _c.c_uint32, _c.c_void_p)
        return int(func(bpf_map)) if func else None

    def set_max_entries(self, bpf_map: int, entries: int) -> int:
        func = self.sym("bpf_map__set_max_entries", _c.c_int, _c.c_void_p, _c.c_uint32) or self.sym(
            "bpf_map__resize", _c.c_int, _c.c_void_p, _c.c_uint32
        )
        return _int_result(func(bpf_map, entries)) if func else -errno.ENOSYS

    def set_inner_map_fd(self, bpf_map: int, fd: int) -> int:
        func = self.sym("bpf_map__set_inner_map_fd", _c.c_int, _c.c_void_p, _c.c_int)
        return _int_result(func(bpf_map, fd)) if func else -errno.ENOSYS

    def create_ringbuf(self, size: int) -> int:
        """fd of a new BPF_MAP_TYPE_RINGBUF of ``size`` bytes, or -errno."""
        func = self.sym(
            "bpf_map_create",
            _c.c_int,
            _c.c_int,
            _c.c_char_p,
            _c.c_uint32,
            _c.c_uint32,
            _c.c_uint32,
            _c.c_void_p,
        )
        if func:
            return _int_result(func(BPF_MAP_TYPE_RINGBUF, None, 0, 0, size, None))
        func = self.sym(
            "bpf_create_map", _c.c_int, _c.c_int, _c.c_int, _c.c_int, _c.c_int, _c.c_uint32
        )
        if not func:
            return -errno.ENOSYS
        return _int_result(func(BPF_MAP_TYPE_RINGBUF, 0, 0, size, 0))

    # -- feature probes: (True | False | None, error); None means the probe itself failed
    def _probe(self, new: tuple[Any, ...], old: tuple[Any, ...]) -> tuple[bool | None, str | None]:
        name, argtypes, args = new
        func = self.sym(name, _c.c_int, *argtypes)
        if func:
            rc = int(func(*args))
            if rc < 0:
                return None, f"{name}: {error_text(-rc)}"
            return rc > 0, None
        name, argtypes, args = old
        func = self.sym(name, _c.c_bool, *argtypes)
        if func:
            return bool(func(*args)), None
        return None, "libbpf has no probe API for this"

    def probe_map_type(self, type_id: int) -> tuple[bool | None, str | None]:
        return self._probe(
            ("libbpf_probe_bpf_map_type", (_c.c_int, _c.c_void_p), (type_id, None)),
            ("bpf_probe_map_type", (_c.c_int, _c.c_uint32), (type_id, 0)),
        )

    def probe_prog_type(self, type_id: int) -> tuple[bool | None, str | None]:
        return self._probe(
            ("libbpf_probe_bpf_prog_type", (_c.c_int, _c.c_void_p), (type_id, None)),
            ("bpf_probe_prog_type", (_c.c_int, _c.c_uint32), (type_id, 0)),
        )

    def probe_helper(self, prog_type: int, helper_id: int) -> tuple[bool | None, str | None]:
        supported, problem = self._probe(
            (
                "libbpf_probe_bpf_helper",
                (_c.c_int, _c.c_int, _c.c_void_p),
                (prog_type, helper_id, None),
            ),
            ("bpf_probe_helper", (_c.c_int, _c.c_int, _c.c_uint32), (helper_id, prog_type, 0)),
        )
        if supported and self._misses_new_refusal() and self._kernel_refuses(prog_type, helper_id):
            return False, None
        return supported, problem

    def _misses_new_refusal(self) -> bool:
        """Whether this libbpf's helper probe predates the 6.10 verifier wording (< 1.5)."""
        if self._old_helper_probe is None:
            major = self.sym("libbpf_major_version", _c.c_uint32)
            minor = self.sym("libbpf_minor_version", _c.c_uint32)
            version = (int(major()), int(minor())) if major and minor else (0, 0)
            self._old_helper_probe = version < (1, 5)
        return self._old_helper_probe

    def _kernel_refuses(self, prog_type: int, helper_id: int) -> bool:
        """Load libbpf's own probe program once more and read the verifier's answer.

        libbpf < 1.5 only knows "invalid func"/"unknown func"; since 6.10 the verifier says
        "program of this type cannot use helper", which such a libbpf counts as supported.
        Only an explicit refusal in the log turns the answer around. bpf_prog_load() with
        options exists from libbpf 0.6 (the release that added bpf_program__insns).
        """
        load = self.sym(
            "bpf_prog_load", _c.c_int, _c.c_int, _c.c_char_p, _c.c_char_p, _c.c_void_p,
            _c.c_size_t, _c.c_void_p,
        )  # fmt: skip
        if not load or not self.has("bpf_program__insns") or ctypes.sizeof(_c.c_void_p) != 8:
            return False  # (the options layout below is the LP64 one)
        insns = struct.pack("=BBhi", BPF_CALL_CODE, 0, 0, helper_id) + bytes([0x95]) + bytes(7)
        log = ctypes.create_string_buffer(4096)
        opts = ctypes.create_string_buffer(_PROG_LOAD_OPTS_SIZE)
        flags = BPF_F_SLEEPABLE if prog_type == BPF_PROG_TYPE_SYSCALL else 0
        struct.pack_into("=Q", opts, 0, _PROG_LOAD_OPTS_SIZE)
        struct.pack_into("=I", opts, 12, _PROBE_ATTACH_TYPES.get(prog_type, 0))
        struct.pack_into("=I", opts, 20, flags)
        struct.pack_into("=IIQ", opts, 88, 1, len(log), ctypes.addressof(log))
        fd = load(prog_type, None, b"GPL", insns, 2, opts)
        if fd >= 0:
            os.close(fd)
            return False
        return HELPER_REFUSED_TEXT in log.value


class LibbpfLog:
    """Every message libbpf prints during the run (bounded), plus per-call windows.

    A step opens a window around one libbpf call to read back what libbpf said about it
    (an isolated probe's "failed to initialize slot", an attach warning) without searching
    the whole run; windows nest, so a step inside a larger phase can have its own.
    Levels: 0 warn, 1 info, 2 debug (enum libbpf_print_level); -1 marks a bpfcompat step
    boundary in the log.
    """

    def __init__(self, cap: int = LOG_FILE_CHARS) -> None:
        from collections import deque

        self._entries: Any = deque()
        self._size = 0
        self._cap = cap
        self.dropped = 0
        self.count = 0
        self._windows: list[list[tuple[int, str]]] = []

    def add(self, level: int, text: str) -> None:
        if len(text) > LOG_MESSAGE_CHARS:
            keep = LOG_MESSAGE_CHARS - LOG_MESSAGE_HEAD
            elided = len(text) - LOG_MESSAGE_CHARS
            text = (
                f"{text[:LOG_MESSAGE_HEAD]}\n[... {elided} characters elided ...]\n{text[-keep:]}"
            )
        if not text.endswith("\n"):
            text += "\n"
        self.count += 1
        self._entries.append((level, text))
        self._size += len(text)
        while self._size > self._cap and len(self._entries) > 1:
            _, old = self._entries.popleft()
            self._size -= len(old)
            self.dropped += 1
        for window in self._windows:
            window.append((level, text))

    def mark(self, text: str) -> None:
        self.add(-1, f"-- {text} --")

    def open_window(self) -> None:
        """Start collecting messages for one call; windows nest."""
        self._windows.append([])

    def close_window(self) -> list[tuple[int, str]]:
        return self._windows.pop() if self._windows else []

    def render(self, limit: int | None = None) -> str:
        parts = [f"{LOG_LEVELS.get(level, level)}: {text}" for level, text in self._entries]
        if self.dropped:
            parts.insert(0, f"bpfcompat: -- {self.dropped} earlier messages dropped --\n")
        text = "".join(parts)
        return tail_text(text, limit) if limit else text


_DUMP_BEGINS = ("-- BEGIN PROG LOAD LOG --", "-- BEGIN DUMP LOG ---")
_DUMP_ENDS = ("-- END PROG LOAD LOG --", "-- END LOG --")


def warnings_of(window: list[tuple[int, str]], limit: int = WARN_TAIL) -> list[str]:
    """The last warn-level libbpf messages of a window, first line each, 'libbpf: ' dropped.

    Verifier log dumps are left out (they are reported on their own): 1.x prints one
    message framed by BEGIN/END PROG LOAD LOG, 0.x three messages (BEGIN, log, END).
    """
    lines = []
    in_dump = False
    for level, text in window:
        if level != 0:
            continue
        if any(marker in text for marker in _DUMP_BEGINS):
            in_dump = not any(marker in text for marker in _DUMP_ENDS)
            continue
        if in_dump:
            in_dump = not any(marker in text for marker in _DUMP_ENDS)
            continue
        line = text.strip().split("\n", 1)[0].strip()
        if line.startswith("libbpf: "):
            line = line[len("libbpf: ") :]
        if line:
            lines.append(tail_text(line, 1024))
    return lines[-limit:]


def window_text(window: list[tuple[int, str]]) -> str:
    return "".join(text for level, text in window if level >= 0)


def extract_verifier_log(text: str) -> str:
    """The verifier log libbpf dumped into its print stream (when it owned the buffer)."""
    for begin, end in (
        ("-- BEGIN PROG LOAD LOG --\n", "-- END PROG LOAD LOG --"),
        ("-- BEGIN DUMP LOG ---\n", "-- END LOG --"),
    ):
        start = text.rfind(begin)
        if start >= 0:
            start += len(begin)
            stop = text.find(end, start)
            lines = text[start : stop if stop >= 0 else len(text)].split("\n")
            # 0.x prints the log as its own "libbpf: \n<log>\n" message: drop the prefixes
            while lines and lines[0].strip() in ("", "libbpf:"):
                lines.pop(0)
            while lines and lines[-1].strip() in ("", "libbpf:"):
                lines.pop()
            return "\n".join(lines) + "\n" if lines else ""
    return ""


LOG_LEVELS = {-1: "bpfcompat", 0: "warn", 1: "info", 2: "debug"}
_CALLBACKS: list[Any] = []  # libbpf keeps a raw pointer: the ctypes thunk must never be freed


def make_print_callback(log: LibbpfLog) -> Any:
    """A libbpf_print_fn_t that formats each message with libc's vsnprintf into ``log``.

    The va_list arrives as a pointer (on x86-64 va_list is an array type; on arm64 the
    caller passes a copy by reference), which is handed straight to vsnprintf. To learn a
    long message's length first, a byte copy of the va_list (va_copy) is consumed by the
    measuring call; arches whose va_list layout is unknown get one truncating call.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        libc = ctypes.CDLL(None, use_errno=True)
    vsnprintf = libc.vsnprintf
    vsnprintf.restype = ctypes.c_int
    vsnprintf.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
    small_size = 8192
    small = ctypes.create_string_buffer(small_size)
    va_size = {"x86_64": 24, "aarch64": 32}.get(os.uname().machine, 0)
    va_copy = ctypes.create_string_buffer(max(va_size, 1))

    def callback(level: int, fmt: int | None, args: int | None) -> int:
        try:
            if not fmt:
                return 0
            if va_size and args:
                ctypes.memmove(va_copy, args, va_size)
                length = vsnprintf(small, small_size, fmt, ctypes.addressof(va_copy))
                if length >= small_size:
                    big = ctypes.create_string_buffer(length + 1)
                    length = vsnprintf(big, length + 1, fmt, args)
                    raw = big.raw[: max(length, 0)]
                else:
                    raw = small.raw[: max(length, 0)]
            else:
                length = vsnprintf(small, small_size, fmt, args)
                raw = small.raw[: max(min(length, small_size - 1), 0)]
            log.add(int(level), decode(raw))
        except Exception:  # a callback must never raise into C
            pass
        return 0

    thunk = _PRINT_FN(callback)
    _CALLBACKS.append(thunk)
    return thunk


# --- mounts, files, caches -------------------------------------------------------------------


def read_mounts() -> dict[str, str]:
    """mount point -> filesystem type, from /proc/self/mounts."""
    mounts: dict[str, str] = {}
    for line in (read_text("/proc/self/mounts", 1 << 20) or "").splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mounts[fields[1].replace("\\040", " ")] = fields[2]
    return mounts


def mount_fs(fstype: str, target: str) -> str | None:
    """mount(2) through libc (no process spawned); None on success, else the error."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        func = libc.mount
        func.restype = ctypes.c_int
        func.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
        if func(fstype.encode(), target.encode(), fstype.encode(), 0, None) == 0:
            return None
        return os.strerror(ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        return str(exc)


def write_atomic(path: str, data: bytes) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def safe_filename(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    return cleaned[:100] or "unnamed"


class BootCache:
    """Per-boot cache in /tmp so that many validator runs in one guest boot probe once.

    Keyed by /proc/sys/kernel/random/boot_id plus whatever else the entry depends on
    (bpftool binary, libbpf version). Only conclusive results are stored. The directory
    must be ours (owner and mode) before anything in it is trusted.
    """

    def __init__(self) -> None:
        self.boot_id = (read_text("/proc/sys/kernel/random/boot_id") or "").strip() or None
        self.usable = False
        if not self.boot_id:
            return
        try:
            os.makedirs(CACHE_DIR, mode=0o700, exist_ok=True)
            st = os.stat(CACHE_DIR)
            self.usable = st.st_uid == os.geteuid() and not st.st_mode & 0o022
        except OSError:
            self.usable = False

    def _path(self, name: str) -> str:
        return os.path.join(CACHE_DIR, f"{name}-{self.boot_id}.json")

    def get(self, name: str, key: str) -> Any:
        if not self.usable:
            return None
        try:
            with open(self._path(name), "rb") as handle:
                entry = json.loads(handle.read())
        except (OSError, ValueError):
            return None
        if isinstance(entry, dict) and entry.get("key") == key:
            return entry.get("value")
        return None

    def put(self, name: str, key: str, value: Any) -> None:
        if not self.usable:
            return
        with contextlib.suppress(OSError):
            write_atomic(self._path(name), json.dumps({"key": key, "value": value}).encode())


def find_executable(name: str) -> str | None:
    """PATH lookup plus the sbin directories a minimal guest PATH may lack."""
    dirs = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/sbin", "/usr/local/sbin"]
    for directory in dirs:
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class KernelLog:
    """Kernel log records written while the validator runs, read from /dev/kmsg.

    The descriptor is opened non-blocking and moved to the end of the log at the start of
    the run, so reading it at the end returns only what the kernel said in between (each
    read() is one record; EAGAIN means no more, EPIPE that records were overwritten before
    they were read). Nothing is consumed: /dev/kmsg readers each have their own position.
    """

    def __init__(self) -> None:
        self.fd: int | None = None
        self.error: str | None = None
        self.lost = False
        try:
            flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
            self.fd = os.open(KMSG_PATH, flags)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as exc:
            self.error = f"cannot read {KMSG_PATH}: {exc.strerror or exc}"
            self.close()

    def messages(self, limit: int = KMSG_MAX_RECORDS) -> list[str]:
        """The text of each record since the start (first line only), at most ``limit``."""
        texts: list[str] = []
        while self.fd is not None and len(texts) < limit:
            try:
                record = os.read(self.fd, KMSG_RECORD_BYTES)
            except BlockingIOError:
                break
            except BrokenPipeError:
                self.lost = True
                continue
            except OSError as exc:
                self.error = f"reading {KMSG_PATH}: {exc.strerror or exc}"
                break
            if not record:
                break
            _prefix, _sep, text = decode(record).partition(";")
            texts.append(text.split("\n", 1)[0])
        return texts

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def lockdown_denials(messages: list[str], limit: int = LOCKDOWN_DENIALS_MAX) -> list[str]:
    """The distinct lockdown refusal lines among kernel log messages, first ``limit``."""
    found: dict[str, None] = {}
    for text in messages:
        if len(found) < limit and _LOCKDOWN_DENIAL_RE.match(text):
            found[text.strip()] = None
    return list(found)


# --- the run ---------------------------------------------------------------------------------


class Validator:
    """One validation run: each step fills its part of ``self.result`` and is timed."""

    def __init__(self, config: Config, started: float) -> None:
        self.config = config
        self.started = started
        self.lib: Libbpf | None = None
        self.log = LibbpfLog()
        self.obj: int | None = None
        self.progs: list[int] = []  # libbpf program pointers, discovery order
        self.map_ptrs: dict[str, int] = {}
        self.links: list[int] = []
        self.ringbuf_fds: dict[int, int] = {}  # inner ringbuf bytes -> fd
        self.cpus: int | None = None
        self.elf: dict[str, Any] = {}
        self.plan_tests: list[dict[str, Any]] = []
        self.plan_error: str | None = None
        self.cache = BootCache()
        self.kernel_log: KernelLog | None = None
        self.bpftool_probe: dict[str, Any] | None = None  # parsed `bpftool feature probe -j`
        self._vbuf: Any = None
        self._vbuf_map: Any = None
        self._old_print: int | None = None
        self.errors: list[dict[str, str]] = []
        self.warnings: list[dict[str, str]] = []
        self.timings: dict[str, float] = {}
        self.libbpf_log_path: str | None = None
        self.load_log_text = ""
        self.result = self._skeleton()

    # -- bookkeeping
    def _skeleton(self) -> dict[str, Any]:
        c = self.config
        return {
            "schema_version": SCHEMA_VERSION,
            "validator_version": VALIDATOR_VERSION,
            "timestamp": utc_timestamp(),
            "status": "fail",
            "host": dict.fromkeys(HOST_KEYS),
            "input": {
                "artifact": c.artifact,
                "manifest": c.manifest_path,
                "functional_plan": c.plan_path,
                "attach_mode": c.attach_mode,
                "probe_features": c.probe_features,
                "log_dir": c.log_dir,
                "set_map_max_entries": c.raw_max_entries,
                "set_map_inner_ringbuf": c.raw_inner_ringbuf,
                "prog_variants": [g["raw"] for g in c.variant_groups],
            },
            "artifact": {},
            "map_fixups": [],
            "auto_sized_maps": [],
            "auto_typed_programs": [],
            "program_type_overrides": [],
            "program_variants": [],
            "btf": {
                "kernel_btf_available": False,
                "kernel_btf_path": None,
                "kernel_btf_size": None,
                "artifact_has_btf": False,
                "artifact_has_btf_ext": False,
            },
            "security": {
                "lockdown": None,
                "lockdown_raw": None,
                "lockdown_error": None,
                "securityfs_mounted_by_validator": False,
                "lockdown_denials": [],
                "lockdown_denials_error": None,
            },
            "capabilities": {
                "bpftool_available": False,
                "bpftool_path": None,
                "bpftool_probe_ok": False,
                "bpftool_probe_output_path": None,
                "bpftool_probe_cached": False,
                "bpftool_probe_error": None,
                "map_types": {},
                "program_types": {},
                "probe_errors": {},
                "helpers": {},
                "helper_program_types": {},
                "attach_prereqs": {
                    "tracefs": False,
                    "tracefs_path": None,
                    "kprobe_events": False,
                    "tracepoint_events": False,
                    "kprobe_pmu": False,
                    "debugfs_tracing": False,
                },
            },
            "discovery": {"program_count": 0, "map_count": 0, "programs": [], "maps": []},
            "load": {
                "status": "fail",
                "stage": None,
                "error_code": 0,
                "error": None,
                "errno_name": None,
                "failed_program": None,
                "failed_map": None,
                "libbpf_error_code": None,
                "libbpf_messages": [],
                "verifier_log": "",
            },
            "attach": {
                "mode": c.attach_mode,
                "status": "skipped",
                "attempted": 0,
                "passed": 0,
                "failed": 0,
                "skipped": 0,
                "required_failed": [],
            },
            "functional": {"status": "skipped", "tests": []},
            "logs": {
                "libbpf": "",
                "libbpf_load": "",
                "libbpf_log_path": None,
                "libbpf_messages": 0,
                "libbpf_dropped": 0,
            },
            "timings": self.timings,
            "errors": self.errors,
            "warnings": self.warnings,
        }

    def error(self, step: str, message: str) -> None:
        self.errors.append({"step": step, "message": message})

    def warn(self, step: str, message: str) -> None:
        self.warnings.append({"step": step, "message": message})

    def step(self, name: str, func: Callable[[], None]) -> None:
        """Run one step, timed; an exception becomes an ``errors`` entry, never a traceback."""
        begin = time.monotonic()
        try:
            func()
        except Exception as exc:
            self.error(name, describe_exception(exc))
        finally:
            self.timings[name] = round(time.monotonic() - begin, 4)

    def set_load_failure(self, stage: str, code: int, window: list[tuple[int, str]]) -> None:
        """Fill ``load`` for a failed open/load: errno, its names, libbpf's own words."""
        load = self.result["load"]
        text = window_text(window)
        messages = warnings_of(window)
        if code >= 4000:  # libbpf 0.x: recover the kernel's errno from its message
            found = _LOAD_ERRNO_TEXT_RE.findall(text)
            real = errno_from_text(found[-1]) if found else None
            if real:
                load["libbpf_error_code"] = code
                code = real
        load.update(
            status="fail",
            stage=stage,
            error_code=code,
            error=error_text(code),
            errno_name=errno_name(code),
            libbpf_messages=messages,
            verifier_log=tail_text(extract_verifier_log(text), PROBE_LOG_TAIL),
        )
        for regexes, key in ((_FAILED_PROG_RES, "failed_program"), (_FAILED_MAP_RES, "failed_map")):
            for regex in regexes:
                found = regex.findall(text)
                if found:
                    load[key] = found[-1]
                    break

    # -- the steps
    def run(self) -> int:
        self.step("host", self.step_host)
        self.step("libbpf", self.step_libbpf)
        self.step("btf", self.step_btf)
        self.step("capabilities", self.step_capabilities)
        if self.lib is not None:
            self.step("open", self.step_open)
        if self.obj is not None:
            self.step("discovery", self.step_discovery)
        if self.config.probe_features and self.lib is not None:
            self.step("type_probes", self.step_type_probes)  # the fixed set even if open failed
        if self.obj is not None:
            if self.config.probe_features:
                self.step("helper_probes", self.step_helper_probes)
                self.step("probes", self.step_isolated_probes)
            self.log.mark("whole-object load")
            self.log.open_window()
            self.step("variants", self.step_variants)
            self.step("fixups", self.step_fixups)
            self.step("load", self.step_load)
            self.load_log_text += window_text(self.log.close_window())
            self.step("attach", self.step_attach)
        self.step("functional", self.step_functional)
        self.step("cleanup", self.step_cleanup)
        self.step("kernel_log", self.step_kernel_log)
        return self.finish()

    def step_host(self) -> None:
        self.kernel_log = KernelLog()  # first: everything the kernel says from here is ours
        uname = os.uname()
        host = self.result["host"]
        host.update(
            sysname=uname.sysname,
            nodename=uname.nodename,
            release=uname.release,
            version=uname.version,
            machine=uname.machine,
            python_version=sys.version.split()[0],
            boot_id=self.cache.boot_id,
            cmdline=(read_text("/proc/cmdline") or "").strip() or None,
            possible_cpus=(read_text("/sys/devices/system/cpu/possible") or "").strip() or None,
        )
        self._raise_memlock(host)
        self._raise_nofile()

    def step_libbpf(self) -> None:
        """Load the guest's libbpf and route its print stream into our log for the run."""
        lib, problem = Libbpf.load()
        if lib is None:
            self.error("libbpf", problem or "libbpf not found")
            load = self.result["load"]
            load.update(status="fail", stage="libbpf", error=problem)
            load.update(error_code=errno.ENOENT, errno_name="ENOENT")
            return
        self.lib = lib
        version = lib.version()
        self.result["host"].update(
            libbpf_version=version["version"],
            libbpf_soname=version["soname"],
            libbpf_path=version["path"],
        )
        thunk = make_print_callback(self.log)
        self._old_print = lib.set_print(ctypes.cast(thunk, ctypes.c_void_p))

    def _raise_memlock(self, host: dict[str, Any]) -> None:
        """Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; libbpf 0.x never bumps it."""
        try:
            import resource

            limit = resource.RLIMIT_MEMLOCK
            _, hard = resource.getrlimit(limit)
            try:
                resource.setrlimit(limit, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            except (ValueError, OSError):
                resource.setrlimit(limit, (hard, hard))  # no CAP_SYS_RESOURCE: soft up to hard
                self.warn("host", "RLIMIT_MEMLOCK raised only to its hard limit")
            host["memlock_raised"] = True
            host["memlock_limit"] = resource.getrlimit(limit)[0]
        except (ImportError, ValueError, OSError) as exc:
            self.warn("host", f"cannot raise RLIMIT_MEMLOCK: {exc}")

    def _raise_nofile(self) -> None:
        """Every loaded program, map and link holds an fd: with the default soft limit of
        1024 an object of a few thousand programs fails with EMFILE, which says nothing
        about the kernel. Real loaders raise the limit; so do we (this process only)."""
        try:
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = 65536 if hard == resource.RLIM_INFINITY else max(hard, 65536)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            except (ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ImportError, ValueError, OSError) as exc:
            self.warn("host", f"cannot raise RLIMIT_NOFILE: {exc}")

    def step_btf(self) -> None:
        btf = self.result["btf"]
        path = "/sys/kernel/btf/vmlinux"
        try:
            btf["kernel_btf_size"] = os.stat(path).st_size
            btf["kernel_btf_available"] = True
            btf["kernel_btf_path"] = path
        except OSError:
            pass
        self.elf = inspect_elf(self.config.artifact)
        btf["artifact_has_btf"] = self.elf["has_btf"]
        btf["artifact_has_btf_ext"] = self.elf["has_btf_ext"]
        self.result["artifact"] = self.elf
        self._lockdown()

    def _lockdown(self) -> None:
        """Lockdown changes what the verifier allows; only this file says it is the cause."""
        sec = self.result["security"]
        path = "/sys/kernel/security/lockdown"
        raw = read_text(path)
        if raw is None and read_mounts().get("/sys/kernel/security") != "securityfs":
            problem = mount_fs("securityfs", "/sys/kernel/security")
            sec["securityfs_mounted_by_validator"] = problem is None
            raw = read_text(path)
        if raw is None:
            sec["lockdown_error"] = "no /sys/kernel/security/lockdown (no lockdown LSM)"
            return
        sec["lockdown_raw"] = raw.strip()
        match = re.search(r"\[(\w+)\]", raw)
        sec["lockdown"] = match.group(1) if match else None

    def step_capabilities(self) -> None:
        caps = self.result["capabilities"]
        self._attach_prereqs(caps["attach_prereqs"])
        bpftool = find_executable("bpftool")
        caps["bpftool_available"] = bpftool is not None
        caps["bpftool_path"] = bpftool
        if bpftool and self.config.probe_features:
            self._bpftool_probe(bpftool, caps)

    def _attach_prereqs(self, prereqs: dict[str, Any]) -> None:
        """Where tracefs is: libbpf 1.x uses /sys/kernel/tracing, 0.x only debugfs's copy."""
        for path in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
            if os.path.isdir(os.path.join(path, "events")):
                if not prereqs["tracefs"]:
                    prereqs["tracefs"] = True
                    prereqs["tracefs_path"] = path
                    prereqs["kprobe_events"] = os.path.exists(f"{path}/kprobe_events")
                    prereqs["tracepoint_events"] = True
                if path.startswith("/sys/kernel/debug"):
                    prereqs["debugfs_tracing"] = True
        prereqs["kprobe_pmu"] = os.path.exists("/sys/bus/event_source/devices/kprobe/type")

    def _output_path(self, name: str) -> str:
        if self.config.log_dir:
            return os.path.join(self.config.log_dir, name)
        return f"{self.config.out}.{name}"

    def _bpftool_probe(self, bpftool: str, caps: dict[str, Any]) -> None:
        """``bpftool feature probe -j``, once per boot: it loads hundreds of test programs."""
        st = os.stat(bpftool)
        key = f"{os.path.realpath(bpftool)}:{st.st_size}:{st.st_mtime_ns}"
        output = self.cache.get("bpftool-probe", key)
        if isinstance(output, str):
            caps["bpftool_probe_cached"] = True
        else:
            import subprocess

            try:
                proc = subprocess.run(
                    [bpftool, "feature", "probe", "-j"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    timeout=BPFTOOL_TIMEOUT,
                )
            except subprocess.TimeoutExpired:
                caps["bpftool_probe_error"] = f"timed out after {BPFTOOL_TIMEOUT:g}s"
                return
            except OSError as exc:
                caps["bpftool_probe_error"] = str(exc)
                return
            output = decode(proc.stdout)
            if proc.returncode != 0:
                caps["bpftool_probe_error"] = (
                    f"exit {proc.returncode}: {tail_text(decode(proc.stderr).strip(), 1024)}"
                )
                output = None
        if output is not None:
            try:
                parsed = json.loads(output)
            except ValueError as exc:
                caps["bpftool_probe_error"] = f"output is not JSON: {exc}"
                parsed = None
            if isinstance(parsed, dict):
                caps["bpftool_probe_ok"] = True
                self.bpftool_probe = parsed
                if not caps["bpftool_probe_cached"]:
                    self.cache.put("bpftool-probe", key, output)
            path = self._output_path("bpftool-feature-probe.json")
            write_atomic(path, output.encode())
            caps["bpftool_probe_output_path"] = path

    def step_type_probes(self) -> None:
        """libbpf's own map/program type probes: the artifact's types plus a fixed set."""
        lib = self.lib
        assert lib is not None
        caps = self.result["capabilities"]
        disc = self.result["discovery"]
        map_ids = {MAP_TYPE_NAMES.index(n) for n in FIXED_PROBE_MAP_TYPES}
        map_ids.update(m["type_id"] for m in disc["maps"] if m["type_id"] > 0)
        prog_ids = {PROG_TYPE_NAMES.index(n) for n in FIXED_PROBE_PROG_TYPES}
        prog_ids.update(p["type_id"] for p in disc["programs"] if p["type_id"] > 0)
        key = str(self.result["host"].get("libbpf_path") or lib.soname)
        cached = self.cache.get("libbpf-type-probes", key) or {}
        store: dict[str, dict[str, bool]] = {
            "map": dict(cached.get("map", {})),
            "prog": dict(cached.get("prog", {})),
        }
        for kind, ids, namer, prober, target in (
            ("map", map_ids, map_type_name, lib.probe_map_type, caps["map_types"]),
            ("prog", prog_ids, prog_type_name, lib.probe_prog_type, caps["program_types"]),
        ):
            for type_id in sorted(ids):
                name = namer(type_id)
                if name in store[kind]:
                    target[name] = store[kind][name]
                    continue
                supported, problem = prober(type_id)
                target[name] = supported
                if supported is None:
                    caps["probe_errors"][f"{kind}:{name}"] = problem
                else:
                    store[kind][name] = supported
        self.cache.put("libbpf-type-probes", key, store)

    def step_open(self) -> None:
        lib = self.lib
        assert lib is not None
        if self.elf and not self.elf["elf_valid"]:  # (empty if the btf step crashed)
            load = self.result["load"]
            load.update(
                status="fail",
                stage="open",  # the ELF check is the first half of opening; libbpf never sees it
                error_code=errno.ENOEXEC,
                errno_name="ENOEXEC",
                error=f"not a valid BPF ELF object: {self.elf.get('elf_error')}",
            )
            return
        self.log.mark(f"open {self.config.artifact}")
        self.log.open_window()
        obj, err = lib.open_file(self.config.artifact)
        window = self.log.close_window()
        self.load_log_text += window_text(window)
        if obj is None:
            self.set_load_failure("open", -err, window)
            return
        self.obj = obj

    def step_discovery(self) -> None:
        lib = self.lib
        assert lib is not None and self.obj is not None
        required = {p["name"]: p["attach_required"] for p in self.config.manifest_programs}
        disc = self.result["discovery"]
        self.progs = lib.programs(self.obj)
        probing = self.config.probe_features
        for prog in self.progs:
            name = lib.prog_name(prog)
            type_id = lib.prog_type(prog)
            insns = lib.prog_insns(prog)
            helpers = None
            helper_problem = "libbpf has no bpf_program__insns (before 0.6)"
            if insns is not None:
                helpers = [
                    {"id": i, "name": helper_entry_name(i), "supported": None}
                    for i in decode_calls(insns)[0]
                ]
                helper_problem = "feature probing disabled" if helpers and not probing else None
            disc["programs"].append(
                {
                    "name": name,
                    "section": lib.prog_section(prog),
                    "type": prog_type_name(type_id),
                    "type_id": type_id,
                    "autoload": lib.prog_autoload(prog),
                    "variant_group": None,
                    "attach_required": required.get(name, False),
                    "attach_status": "skipped",
                    "attach_error": None,
                    "attach_errno": 0,
                    "attach_skip_reason": None,
                    "load_status": "skipped",
                    "load_errno": 0,
                    "load_errno_name": None,
                    "load_log": "",
                    "load_log_path": None,
                    "load_skip_reason": None if probing else "feature probing disabled",
                    "load_seconds": None,
                    "helpers": helpers,
                    "kfuncs": None,
                    "helper_probe_error": helper_problem,
                }
            )
        for bpf_map in lib.maps(self.obj):
            name = lib.map_name(bpf_map)
            type_id = lib.map_type(bpf_map)
            self.map_ptrs.setdefault(name, bpf_map)
            disc["maps"].append(
                {
                    "name": name,
                    "type": map_type_name(type_id),
                    "type_id": type_id,
                    "max_entries": lib.map_max_entries(bpf_map),
                }
            )
        disc["program_count"] = len(disc["programs"])
        disc["map_count"] = len(disc["maps"])
        known = {p["name"] for p in disc["programs"]}
        for name in required:
            if name not in known:
                self.warn("manifest", f"manifest program {name!r} is not in the object")

    # -- helpers each program calls
    def step_helper_probes(self) -> None:
        """Probe each program's helpers for its own program type; bpftool's lists for its types.

        One BPF_PROG_LOAD per (program type, helper) not yet known this boot: conclusive
        answers are cached per boot like the type probes, inconclusive ones (libbpf cannot
        probe tracing/lsm/ext/struct_ops helpers) are recorded in helper_probe_error.
        """
        lib = self.lib
        assert lib is not None
        caps = self.result["capabilities"]
        entries = self.result["discovery"]["programs"]
        key = f"{self.result['host'].get('libbpf_path') or lib.soname}:{HELPER_PROBE_CACHE_REV}"
        cached = self.cache.get("libbpf-helper-probes", key)
        store: dict[str, bool] = {}
        if isinstance(cached, dict):
            store = {k: v for k, v in cached.items() if isinstance(v, bool)}
        stored = len(store)
        seen: dict[str, tuple[bool | None, str | None]] = {}
        for entry in entries:
            if not entry["helpers"]:
                continue
            if entry["type_id"] <= 0:
                entry["helper_probe_error"] = "program type unknown to this libbpf"
                continue
            if caps["program_types"].get(entry["type"]) is False:
                # libbpf's helper probe "assumes supported" when the type itself fails to load
                entry["helper_probe_error"] = (
                    f"not probed: the program type probe found {entry['type']} unsupported"
                )
                continue
            problems: dict[str, None] = {}
            for helper in entry["helpers"]:
                probe_key = f"{entry['type_id']}:{helper['id']}"
                if probe_key in store:
                    helper["supported"] = store[probe_key]
                    continue
                if probe_key not in seen:
                    seen[probe_key] = lib.probe_helper(entry["type_id"], helper["id"])
                supported, problem = seen[probe_key]
                helper["supported"] = supported
                if supported is None:
                    problems[problem or "inconclusive"] = None
                else:
                    store[probe_key] = supported
            if problems:
                entry["helper_probe_error"] = "; ".join(problems)
        if len(store) > stored:
            self.cache.put("libbpf-helper-probes", key, store)
        self._bpftool_helpers(caps, entries)

    def _bpftool_helpers(self, caps: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        """bpftool's per-type helper lists, for the artifact's program types only.

        bpftool writes "<type>_available_helpers" lists; an empty list means it could not
        probe that type (tracing, lsm, ext, struct_ops, or a type the kernel lacks), so it
        is recorded as null. helper_program_types names, for each helper some program may
        not call, every program type bpftool found it usable from (empty: none). Where this
        run's own probe refused a helper for a type, that type is taken out of both: bpftool
        linked against libbpf < 1.5 lists every helper the kernel knows for every type.
        """
        table = (self.bpftool_probe or {}).get("helpers")
        if not isinstance(table, dict):
            return
        suffix = "_available_helpers"
        refused = {
            (e["type"], h["name"])
            for e in entries
            for h in e["helpers"] or []
            if h["supported"] is False
        }
        for entry in entries:
            names = table.get(entry["type"] + suffix)
            if entry["type_id"] > 0 and entry["type"] not in caps["helpers"]:
                listed = isinstance(names, list) and names
                caps["helpers"][entry["type"]] = (
                    [n for n in names if (entry["type"], n) not in refused] if listed else None
                )
        for _, name in sorted(refused):
            if name and name not in caps["helper_program_types"]:
                caps["helper_program_types"][name] = [
                    key[: -len(suffix)]
                    for key, names in table.items()
                    if key.endswith(suffix)
                    and isinstance(names, list)
                    and name in names
                    and (key[: -len(suffix)], name) not in refused
                ]

    # -- isolated per-program load probes
    def step_isolated_probes(self) -> None:
        entries = self.result["discovery"]["programs"]
        if len(entries) > MAX_ISOLATED_PROBES:
            reason = f"{len(entries)} programs: over {MAX_ISOLATED_PROBES}, not probed one by one"
            self.warn("probes", f"isolated load probes skipped ({reason})")
            for entry in entries:
                entry["load_skip_reason"] = reason
            return
        for index, entry in enumerate(entries):
            self.log.mark(f"isolated load probe of program {entry['name']!r}")
            begin = time.monotonic()
            try:
                self._probe_program(index, entry)
            except Exception as exc:
                self.error("probes", f"{entry['name']}: {describe_exception(exc)}")
                entry["load_skip_reason"] = "probe crashed (see errors)"
            entry["load_seconds"] = round(time.monotonic() - begin, 4)

    def _probe_program(self, index: int, entry: dict[str, Any]) -> None:
        """Fresh open, only this program autoloaded, the same fixups, log on failure.

        The program's log level stays 0, so a passing program is verified without a log
        (fast, and immune to ENOSPC from a too-small buffer); on failure libbpf retries at
        log level 1 into our bounded buffer. If even 16 MiB is too small, the probe is redone
        with libbpf's own growing buffer and the log is read from its print stream.
        """
        rc, window, vlog, kfuncs = self._probe_once(index, use_buf=True)
        if rc == -errno.ENOSPC and vlog:  # the log outgrew our buffer, masking the errno
            rc, window, vlog, kfuncs = self._probe_once(index, use_buf=False)
        text = window_text(window)
        if vlog is None:  # no bpf_program__set_log_buf in this libbpf
            vlog = extract_verifier_log(text)
        if rc == 0:
            entry["kfuncs"] = kfuncs
            entry["load_status"] = "pass"
            entry["load_skip_reason"] = None
            return
        code = -rc
        if code >= 4000:
            found = _LOAD_ERRNO_TEXT_RE.findall(text)
            code = (found and errno_from_text(found[-1])) or code
        if code == errno.EBADF and _SLOT_INIT_TEXT in text:
            entry["load_status"] = "skipped"
            entry["load_skip_reason"] = (
                "the object statically initialises prog-array (tail-call) slots, so its "
                "programs cannot be loaded one at a time"
            )
            return
        entry["load_status"] = "fail"
        entry["load_skip_reason"] = None
        entry["load_errno"] = code
        entry["load_errno_name"] = errno_name(code)
        log = vlog or "\n".join(warnings_of(window)) + "\n"
        entry["load_log"] = tail_text(log.strip("\n") + "\n", PROBE_LOG_TAIL)
        if self.config.log_dir:
            directory = os.path.join(self.config.log_dir, "verifier")
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, f"{index:03d}-{safe_filename(entry['name'])}.log")
            body = tail_text(vlog, VERIFIER_FILE_CHARS) if vlog else ""
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text if not body else body + "\n-- libbpf --\n" + text)
            entry["load_log_path"] = path

    def _probe_once(
        self, index: int, use_buf: bool
    ) -> tuple[int, list[tuple[int, str]], str | None, list[int] | None]:
        """(rc, libbpf messages, verifier log, kfunc ids after a load that passed)."""
        lib = self.lib
        assert lib is not None
        obj, err = lib.open_file(self.config.artifact)
        if obj is None:
            return err, [], None, None
        vlog: str | None = None
        kfuncs: list[int] | None = None
        try:
            progs = lib.programs(obj)
            for position, prog in enumerate(progs):
                lib.set_autoload(prog, position == index)
            self._apply_fixups(obj, record=False)
            has_buf = False
            if use_buf and index < len(progs):
                if self._vbuf is None:
                    # Anonymous mmap: zero pages on demand, so the 16 MiB buffer costs only
                    # the pages the verifier writes; create_string_buffer would zero-fill
                    # all 4096 pages in every validator process (slow under emulation).
                    self._vbuf_map = mmap.mmap(-1, VERIFIER_BUF_BYTES)
                    self._vbuf = (ctypes.c_char * VERIFIER_BUF_BYTES).from_buffer(self._vbuf_map)
                self._vbuf[0] = b"\0"
                has_buf = lib.set_log_buf(progs[index], self._vbuf, VERIFIER_BUF_BYTES)
            self.log.open_window()
            rc = lib.load_object(obj)
            window = self.log.close_window()
            if has_buf:
                vlog = decode(ctypes.string_at(self._vbuf))
            if rc == 0 and index < len(progs):
                kfuncs = self._kfunc_ids(progs[index])
        finally:
            lib.close(obj)
        return rc, window, vlog, kfuncs

    def _kfunc_ids(self, prog: int) -> list[int] | None:
        """BTF ids of the kfuncs a loaded program calls (libbpf wrote them in at load)."""
        assert self.lib is not None
        insns = self.lib.prog_insns(prog)
        return decode_calls(insns)[1] if insns is not None else None

    # -- variant selection
    def step_variants(self) -> None:
        lib = self.lib
        assert lib is not None
        entries = self.result["discovery"]["programs"]
        by_name = {e["name"]: i for i, e in reversed(list(enumerate(entries)))}
        helper_cache: dict[int, tuple[bool | None, str | None]] = {}
        for group in self.config.variant_groups:
            record: dict[str, Any] = {
                "group": group["group"],
                "chosen": None,
                "disabled": [],
                "probes": [],
                "status": "error",
                "error": None,
            }
            self.result["program_variants"].append(record)
            missing = [v["program"] for v in group["variants"] if v["program"] not in by_name]
            if missing:
                record["error"] = f"program(s) not in the object: {', '.join(missing)}"
                continue
            chosen = None
            for variant in group["variants"]:
                helper_id = variant["helper_id"]
                problem = None
                if helper_id == 0:
                    supported: bool | None = True
                else:
                    if helper_id not in helper_cache:
                        helper_cache[helper_id] = lib.probe_helper(
                            BPF_PROG_TYPE_RAW_TRACEPOINT, helper_id
                        )
                    supported, problem = helper_cache[helper_id]
                probe = {
                    "program": variant["program"],
                    "helper": variant["helper"],
                    "helper_id": helper_id,
                    "supported": supported,
                }
                if problem:
                    probe["error"] = problem
                record["probes"].append(probe)
                if chosen is None and supported:
                    chosen = variant["program"]
            if chosen is None:
                record["status"] = "unsatisfied"
                record["error"] = (
                    "no variant's helper is supported and there is no unconditional "
                    "fallback; all variants are left enabled"
                )
                continue
            record["chosen"] = chosen
            record["status"] = "selected"
            for variant in group["variants"]:
                index = by_name[variant["program"]]
                entries[index]["variant_group"] = group["group"]
                if variant["program"] != chosen:
                    rc = lib.set_autoload(self.progs[index], False)
                    if rc < 0:
                        record["status"] = "error"
                        record["error"] = f"cannot disable {variant['program']}: {error_text(-rc)}"
                        continue
                    entries[index]["autoload"] = False
                    record["disabled"].append(variant["program"])
                else:
                    lib.set_autoload(self.progs[index], True)
                    entries[index]["autoload"] = True

    # -- map fixups
    def _possible_cpus(self) -> int:
        if self.cpus is None:
            assert self.lib is not None
            self.cpus = self.lib.num_possible_cpus()
        return self.cpus

    def _ringbuf_fd(self, size: int) -> int:
        if size not in self.ringbuf_fds:
            assert self.lib is not None
            self.ringbuf_fds[size] = self.lib.create_ringbuf(size)
        return self.ringbuf_fds[size]

    def _apply_fixups(self, obj: int, record: bool) -> list[dict[str, Any]]:
        """Size maps and install inner ringbufs on ``obj``, between open and load.

        Inner maps are never resized with bpf_map__set_max_entries (libbpf dereferences
        their NULL object pointer); they get a ready-made map via set_inner_map_fd.
        """
        lib = self.lib
        assert lib is not None
        if not self.config.fixups:
            return []
        maps = {}
        for bpf_map in lib.maps(obj):
            maps.setdefault(lib.map_name(bpf_map), bpf_map)
        results = []
        for name, want in self.config.fixups.items():
            item: dict[str, Any] = {
                "name": name,
                "requested": want["requested"],
                "applied_entries": None,
                "inner_ringbuf_bytes": want["inner"],
                "status": "applied",
                "error": None,
            }
            results.append(item)
            bpf_map = maps.get(name)
            if bpf_map is None:
                item["status"] = "not_found"
                item["error"] = f"map {name!r} is not in the object"
                continue
            problems = []
            if want["requested"] is not None:
                entries = (
                    self._possible_cpus() if want["requested"] == "cpus" else int(want["requested"])
                )
                if entries <= 0:
                    problems.append(f"cannot count possible CPUs: {error_text(-entries)}")
                else:
                    rc = lib.set_max_entries(bpf_map, entries)
                    if rc < 0:
                        problems.append(f"set_max_entries({entries}): {error_text(-rc)}")
                    else:
                        item["applied_entries"] = entries
            if want["inner"] is not None:
                if lib.map_type(bpf_map) not in (
                    BPF_MAP_TYPE_ARRAY_OF_MAPS,
                    BPF_MAP_TYPE_HASH_OF_MAPS,
                ):
                    problems.append("inner ringbuf requested for a map that is not a map-in-map")
                else:
                    fd = self._ringbuf_fd(want["inner"])
                    if fd < 0:
                        problems.append(
                            f"cannot create a {want['inner']}-byte RINGBUF: {error_text(-fd)}"
                        )
                    else:
                        rc = lib.set_inner_map_fd(bpf_map, fd)
                        if rc < 0:
                            problems.append(f"set_inner_map_fd: {error_text(-rc)}")
            if problems:
                item["status"] = "error"
                item["error"] = "; ".join(problems)
        return results if record else []

    def step_fixups(self) -> None:
        assert self.obj is not None
        self.result["map_fixups"] = self._apply_fixups(self.obj, record=True)
        for item in self.result["map_fixups"]:
            if item["status"] != "applied":
                self.warn("fixups", f"map {item['name']!r}: {item['status']}: {item['error']}")

    # -- whole-object load
    def step_load(self) -> None:
        lib = self.lib
        assert lib is not None and self.obj is not None
        self.log.open_window()
        rc = lib.load_object(self.obj)
        window = self.log.close_window()
        if rc == 0:
            self.result["load"].update(status="pass", stage="load")
            for index, entry in enumerate(self.result["discovery"]["programs"]):
                if entry["autoload"] and entry["kfuncs"] is None:
                    entry["kfuncs"] = self._kfunc_ids(self.progs[index])
            return
        self.set_load_failure("load", -rc, window)

    # -- attach
    def step_attach(self) -> None:
        lib = self.lib
        assert lib is not None
        attach = self.result["attach"]
        entries = self.result["discovery"]["programs"]
        mode = self.config.attach_mode
        loaded = self.result["load"]["status"] == "pass"
        for entry in entries:
            if not loaded:
                entry["attach_skip_reason"] = "object did not load"
            elif mode == "disabled":
                entry["attach_skip_reason"] = "attach mode disabled"
            elif not entry["autoload"]:
                entry["attach_skip_reason"] = "program not loaded (autoload off)"
        if not loaded or mode == "disabled":
            attach["skipped"] = len(entries)
            return
        self.log.mark("auto-attach")
        for index, entry in enumerate(entries):
            if not entry["autoload"]:
                attach["skipped"] += 1
                continue
            self.log.open_window()
            link, err = lib.attach(self.progs[index])
            window = self.log.close_window()
            if link is not None:
                self.links.append(link)
                entry["attach_status"] = "pass"
                attach["passed"] += 1
                continue
            code = -err
            messages = warnings_of(window, 3)
            if code in (errno.EOPNOTSUPP, errno.ESRCH) and not messages:
                # libbpf has no auto-attach for this section (SEC("xdp"), SEC("kprobe"), ...)
                entry["attach_skip_reason"] = (
                    f"libbpf cannot auto-attach section {entry['section']!r}"
                )
                attach["skipped"] += 1
                continue
            entry["attach_status"] = "fail"
            entry["attach_errno"] = code
            entry["attach_error"] = messages[-1] if messages else error_text(code)
            attach["failed"] += 1
        attach["attempted"] = attach["passed"] + attach["failed"]
        for entry in entries:
            if entry["attach_required"] and entry["attach_status"] != "pass":
                if entry["autoload"]:
                    attach["required_failed"].append(entry["name"])
                else:
                    self.warn("attach", f"required program {entry['name']!r} was not loaded")
        if attach["required_failed"] or (mode == "required" and attach["failed"]):
            attach["status"] = "fail"
        elif attach["failed"]:
            attach["status"] = "warn"
        elif attach["passed"]:
            attach["status"] = "pass"

    # -- functional tests
    def step_functional(self) -> None:
        functional = self.result["functional"]
        if self.config.plan_path:
            self.plan_tests, self.plan_error = load_functional_plan(self.config.plan_path)
        if self.plan_error:
            functional["status"] = "fail"
            functional["tests"] = [self._test_record({"name": "functional-plan", "command": ""})]
            functional["tests"][0].update(status="fail", error=self.plan_error)
            return
        if not self.plan_tests:
            return
        if self.result["load"]["status"] != "pass":
            for test in self.plan_tests:
                record = self._test_record(test)
                record.update(status="skipped", error="object did not load")
                functional["tests"].append(record)
            return
        self.log.mark("functional tests")
        for test in self.plan_tests:
            functional["tests"].append(self._run_test(test))
        failed = [t for t in functional["tests"] if t["required"] and t["status"] != "pass"]
        functional["status"] = "fail" if failed else "pass"

    def _test_record(self, test: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": test["name"],
            "required": test.get("required", True),
            "status": "fail",
            "command": test["command"],
            "timeout_seconds": test.get("timeout_seconds", 0),
            "expected_exit_code": test.get("expect_exit_code", 0),
            "exit_code": None,
            "timed_out": False,
            "stdout_tail": "",
            "stderr_tail": "",
            "error": None,
            "duration_seconds": None,
        }

    def _run_test(self, test: dict[str, Any]) -> dict[str, Any]:
        """Run one command without a shell, in its own session so a timeout kills it all."""
        import shlex
        import signal
        import subprocess

        record = self._test_record(test)
        try:
            argv = shlex.split(test["command"])
        except ValueError as exc:
            record["error"] = f"cannot split command: {exc}"
            return record
        begin = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            record["error"] = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
            return record
        out, err = b"", b""
        problems = []
        try:
            out, err = proc.communicate(timeout=test["timeout_seconds"])
        except subprocess.TimeoutExpired:
            exited = proc.poll() is not None
            record["timed_out"] = not exited
            if exited:
                problems.append("background processes still held stdout/stderr at the timeout")
            else:
                problems.append(f"timed out after {test['timeout_seconds']:g}s")
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                problems.append("output pipes stayed open after kill")
        finally:
            with contextlib.suppress(OSError):  # reap what the command left in its session
                os.killpg(proc.pid, signal.SIGKILL)
        record["duration_seconds"] = round(time.monotonic() - begin, 4)
        record["exit_code"] = proc.poll()
        stdout, stderr = decode(out), decode(err)
        record["stdout_tail"] = tail_text(stdout, OUTPUT_TAIL)
        record["stderr_tail"] = tail_text(stderr, OUTPUT_TAIL)
        if not record["timed_out"]:
            if record["exit_code"] != test["expect_exit_code"]:
                problems.append(
                    f"exit code {record['exit_code']}, expected {test['expect_exit_code']}"
                )
            for key, text in (("stdout", stdout), ("stderr", stderr)):
                want = test[f"expect_{key}_contains"]
                if want is not None and want not in text:
                    problems.append(f"{key} does not contain {want!r}")
        record["status"] = "fail" if problems else "pass"
        record["error"] = "; ".join(problems) or None
        return record

    def step_kernel_log(self) -> None:
        """Lockdown refusals the kernel logged while this run (and its tests) went on."""
        sec = self.result["security"]
        watch = self.kernel_log
        if watch is None:
            sec["lockdown_denials_error"] = "the kernel log was not opened (host step failed)"
            return
        try:
            sec["lockdown_denials"] = lockdown_denials(watch.messages())
        finally:
            watch.close()
        problems = [watch.error] if watch.error else []
        if watch.lost:
            problems.append("kernel log records were overwritten before they were read")
        sec["lockdown_denials_error"] = "; ".join(problems) or None

    # -- cleanup and output
    def step_cleanup(self) -> None:
        lib = self.lib
        if lib is None:
            return
        for link in self.links:
            lib.destroy_link(link)
        self.links = []
        if self.obj is not None:
            lib.close(self.obj)
            self.obj = None
        for fd in self.ringbuf_fds.values():
            if fd >= 0:
                os.close(fd)
        self.ringbuf_fds = {}

    def finish(self) -> int:
        """Decide status and exit code, write libbpf.log and the JSON (atomically)."""
        result = self.result
        load_ok = result["load"]["status"] == "pass"
        failed = (
            not load_ok
            or result["attach"]["status"] == "fail"
            or result["functional"]["status"] == "fail"
        )
        result["status"] = "fail" if failed else "pass"
        if self.lib is not None and self._old_print is not None:
            self.lib.set_print(self._old_print)
        full_log = self.log.render()
        logs = result["logs"]
        logs["libbpf"] = tail_text(full_log, LOG_JSON_CHARS)
        logs["libbpf_load"] = tail_text(self.load_log_text, LOG_JSON_CHARS)
        logs["libbpf_messages"] = self.log.count
        logs["libbpf_dropped"] = self.log.dropped
        log_path = self._output_path("libbpf.log")
        try:
            write_atomic(log_path, full_log.encode("utf-8", "replace"))
            logs["libbpf_log_path"] = log_path
        except OSError as exc:
            self.error("output", f"cannot write {log_path}: {exc.strerror}")
        self.timings["total"] = round(time.monotonic() - self.started, 4)
        startup = self._startup_seconds()
        if startup is not None:
            self.timings["process_start_to_main"] = startup
        internal = any(e["step"] in CORE_STEPS for e in self.errors)
        try:
            payload = json.dumps(result, indent=2, allow_nan=False, default=str)
            write_atomic(self.config.out, payload.encode("ascii") + b"\n")
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"{PROG}: error: cannot write --out {self.config.out!r}: {exc}\n")
            return EXIT_ERROR
        sys.stdout.write(
            f"{PROG}: {result['status']} (load {result['load']['status']}, attach "
            f"{result['attach']['status']}, functional {result['functional']['status']}"
            f"{', internal errors' if internal else ''}) -> {self.config.out}\n"
        )
        if internal:
            return EXIT_ERROR
        return EXIT_FAIL if failed else EXIT_PASS

    @staticmethod
    def _startup_seconds() -> float | None:
        """Seconds from process start to now minus our own runtime: interpreter start-up."""
        stat = read_text("/proc/self/stat")
        uptime = read_text("/proc/uptime")
        if not stat or not uptime:
            return None
        try:
            start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
            age = float(uptime.split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
        except (ValueError, IndexError, OSError):
            return None
        return round(max(age - (time.monotonic() - _MODULE_START), 0.0), 3)


_MODULE_START = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 pass, 2 fail, 1 error)."""
    started = time.monotonic()
    try:
        config = parse_args(argv)
    except UsageError as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"{PROG}: error: {message}\n")
        return EXIT_ERROR
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return Validator(config, started).run()
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: error: interrupted\n")
        return EXIT_ERROR
    except Exception as exc:  # last line of defence: still no traceback
        sys.stderr.write(f"{PROG}: error: internal error: {describe_exception(exc)}\n")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
