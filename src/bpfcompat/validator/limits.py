"""Every bound the tool enforces on both sides of the guest boundary, in one place.

The host's manifest models and the validator's argument parser import these, so a
manifest the host accepts is never refused by the guest, and the validator's output is
bounded by the same numbers the host checks it against.
"""

from __future__ import annotations

# -- what the validator keeps: a 100 MB verifier log must not exhaust a 512 MB guest or
# produce a result the host cannot parse.
LOG_FILE_CHARS = 4 << 20  # libbpf.log keeps the last 4 MiB of messages
LOG_JSON_CHARS = 256 << 10  # logs.libbpf keeps the last 256 KiB
LOG_MESSAGE_CHARS = 512 << 10  # one libbpf message (a verifier dump) is cut to this
LOG_MESSAGE_HEAD = 16 << 10  # ... keeping this much of its head and the rest of its tail
PROBE_LOG_TAIL = 8 << 10  # discovery.programs[].load_log
# Loads the per-program probes may do after the whole-object load (programs.py): one
# shared load and one probe alone per refused program, so an object whose programs are
# refused one after another stops here and the rest are reported as not probed.
MAX_PROBE_LOADS = 128
# ... and once the verifier has processed this many instructions in them: verification
# is most of a probe's cost (~50 us an instruction under TCG: tracee's 169 programs take
# 2.4M, minutes, against a 90 s job limit). Counted, not timed: reproducible results.
MAX_PROBE_INSNS = 500_000
# Programs one shared probe load takes at most: a load relocates all of them, and the
# work for those after a refused program is lost (relocating ~140 of tracee's programs
# costs twice a whole open).
MAX_SHARED_PROGRAMS = 64
# Per-program verifier statistics logs (vstats.py): one anonymous mapping of at most
# this much address space, cut into a slice per program; only written pages cost memory.
STATS_BUF_BYTES = 64 << 20
STATS_SLICE_MAX = 64 << 10  # the summary is ~200 bytes, a refusal's lines a few KiB
STATS_SLICE_MIN = 4 << 10
STATS_TAIL_CHARS = 8 << 10  # the summary lines are at the end of a log
VERIFIER_BUF_BYTES = 16 << 20  # libbpf's own first verifier buffer size (BPF_LOG_BUF_SIZE)
VERIFIER_FILE_CHARS = 1 << 20  # per-program verifier log file in --log-dir
OUTPUT_TAIL = 4 << 10  # functional test stdout/stderr tails
WARN_TAIL = 10  # libbpf warnings attached to a failing load/open/attach
BPFTOOL_TIMEOUT = 120.0
MAX_SECTIONS_LISTED = 1024
KMSG_MAX_RECORDS = 10000  # kernel log records read after the run, at most
KMSG_RECORD_BYTES = 16 << 10
LOCKDOWN_DENIALS_MAX = 32

# -- what a manifest may ask for
MAX_MAP_ENTRIES = 2**32 - 1  # the kernel's u32 max_entries
MAX_RINGBUF_BYTES = 2**30  # 1 GiB: more than any guest we boot could hold
# The kernel caps a value at KMALLOC_MAX_SIZE for most map types; a loader never asks more.
MAX_MAP_VALUE_BYTES = 1 << 24
# What a loader gives maps its object compiled with a zero size, when the manifest does
# not say: one entry per possible CPU (how per-CPU and ring-buffer maps are sized from the
# CPU count), a 256 KiB ring buffer, and stack-trace values of PERF_MAX_STACK_DEPTH (127)
# 8-byte frames (include/uapi/linux/perf_event.h).
AUTO_RINGBUF_BYTES = 256 << 10
AUTO_STACK_VALUE_BYTES = 127 * 8
MAX_HELPER_ID = 1023
MAX_NAME_CHARS = 255  # BPF object, map and program names, variant groups, test names
MAX_COMMAND_CHARS = 4096
FUNCTIONAL_TIMEOUT_DEFAULT = 10.0
FUNCTIONAL_TIMEOUT_MAX = 600.0
MAX_TEST_RETRIES = 5  # a functional test that fails is run again up to this many times
# The contract's flags pack names into `<map>=<n>` and `<group>=<prog>:<helper>,...`:
# these characters would be read as separators.
NAME_SEPARATORS = "=,:"


def name_problem(name: str) -> str | None:
    """Why `name` cannot travel in a validator flag, or None when it can."""
    if not name or not name.strip():
        return "must not be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"is longer than {MAX_NAME_CHARS} characters"
    bad = sorted({ch for ch in name if ch in NAME_SEPARATORS})
    if bad:
        return "may not contain " + " ".join(repr(ch) for ch in bad)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        return "may not contain control characters"
    if name != name.strip():
        return "may not start or end with white space"
    return None


def command_problem(command: str) -> str | None:
    """Why a functional-test command cannot be run, or None when it can."""
    if not command.strip():
        return "must not be empty"
    if len(command) > MAX_COMMAND_CHARS:
        return f"is longer than {MAX_COMMAND_CHARS} characters"
    if "\0" in command:
        return "may not contain a NUL character"
    return None
