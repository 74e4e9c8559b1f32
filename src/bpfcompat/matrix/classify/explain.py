"""A rule's verdict in the user's terms: what the kernel lacks and since when, what the
source called where the log names something else, and a fix for this cell.

A rule decides the code from the logs; this module then adds, from the facts table
(analysis/data/features.yaml) and the object's static reading:

- `needs`: "needs >= 5.16 for map type bloom_filter (this kernel: 5.10)" when the cell
  failed for a feature newer than its kernel (never when the kernel is as new as the
  feature: then something else is missing and the text would mislead);
- in `detail`, every helper the evidence names by id told by name and release, and what
  produced it: a macro of libbpf's bpf_helpers.h (bpf_printk with more than three
  arguments is bpf_trace_vprintk) or a load-time rewrite of libbpf (bpf_probe_read_kernel
  becomes bpf_probe_read when libbpf's own probe of it fails);
- `pinpoint` (pinpoint.py) for failures the verifier printed an instruction for;
- a remediation naming this cell's map, helper, kfunc, program or source line, where the
  rule's own is generic (a rule's cell-specific one, e.g. manifest lines, is kept).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bpfcompat.analysis import features as F
from bpfcompat.matrix.verdict import Pinpoint, Verdict

from .facts import Facts
from .matchers import CALLBACK_HELPERS, map_failure
from .messages import CORE_POISON, HELPER_INVALID_FUNC, HELPER_UNKNOWN_FUNC, MAP_POISON_BASE
from .pinpoint import pinpoint
from .rules import REGISTRY

# A helper named in a log line: "bpf_probe_read#4", "unknown#177".
_HELPER_REF = re.compile(r"\b([A-Za-z_]\w{0,63})#(\d{1,10})\b")
_QUOTED = re.compile(r"'([^']{1,128})'")
_VARIANT_FIX = "manifest program_variants"

# What the verifier's most common reasons ask of the source (kernel/bpf/verifier.c wording).
VERIFIER_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"invalid access to map value, value_size=(?P<vs>\d+) off=(?P<off>-?\d+) "
            r"size=(?P<size>\d+)"
        ),
        "it reads {size} bytes at offset {off} of the {vs}-byte map value: keep offset + size "
        "within {vs} bytes",
    ),
    (
        re.compile(r"invalid mem access '(?:map_value_or_null|\w*_or_null)'"),
        "check the pointer against NULL before using it (a map lookup may return NULL)",
    ),
    (
        re.compile(r"invalid mem access '(?:scalar|inv)'"),
        "the register holds a plain number, not a pointer: read memory through a pointer the "
        "verifier knows (bpf_probe_read_kernel/BPF_CORE_READ for kernel memory)",
    ),
    (
        re.compile(r"R\d+ !read_ok"),
        "a register is read before anything was written to it "
        "(an uninitialised variable, or no return value on some path)",
    ),
    (
        re.compile(r"invalid (?:indirect )?read from stack"),
        "initialise the stack variable (or the whole buffer) before it is read or passed on",
    ),
    (
        re.compile(r"unbounded memory access|min value is negative|max value is outside"),
        "bounds-check the index or length against the buffer size before the access",
    ),
    (
        re.compile(r"invalid access to packet"),
        "compare data + offset + size against data_end before the access",
    ),
    (
        re.compile(r"Unreleased reference"),
        "release what was acquired (bpf_ringbuf_submit/discard, bpf_sk_release, ...) on every path",
    ),
    (
        re.compile(r"back-edge from insn|infinite loop detected"),
        "bound the loop (5.3) or use bpf_loop (5.17)",
    ),
)

# What to use where a map type is missing (each available long before it).
MAP_ALTERNATIVES = {
    "ringbuf": "a perf event array written with bpf_perf_event_output (4.4)",
    "bloom_filter": "a hash map used as a set",
    "cgrp_storage": "a hash map keyed by cgroup id (bpf_get_current_cgroup_id, 4.18)",
    "task_storage": "a hash map keyed by pid",
    "inode_storage": "a hash map keyed by inode number",
    "sk_storage": "a hash map keyed by socket cookie (bpf_get_socket_cookie)",
    "lru_hash": "a hash map with an eviction policy of your own",
}
# What to call where a helper is missing.
HELPER_FALLBACKS = {
    "bpf_loop": "a bounded loop (5.3) the verifier can check",
    "bpf_ringbuf_output": "bpf_perf_event_output with a perf event array (4.4)",
    "bpf_ringbuf_reserve": "bpf_perf_event_output with a perf event array (4.4)",
    "bpf_ringbuf_submit": "bpf_perf_event_output with a perf event array (4.4)",
    "bpf_ringbuf_discard": "bpf_perf_event_output with a perf event array (4.4)",
    "bpf_get_current_task_btf": "bpf_get_current_task (4.8) with CO-RE reads",
    "bpf_ktime_get_boot_ns": "bpf_ktime_get_ns (4.1)",
    "bpf_ktime_get_coarse_ns": "bpf_ktime_get_ns (4.1)",
    "bpf_for_each_map_elem": "a bounded loop over the map's keys",
}


@dataclass(frozen=True)
class Need:
    """A feature the cell's kernel lacks: `what` `name`, upstream since `since`."""

    what: str  # "map type", "helper", "kfunc", "program type", "attach type", ...
    name: str
    since: tuple[int, int]
    estimated: bool = False
    where: str | None = None  # for facts from the run's kernels rather than the table

    @property
    def since_text(self) -> str:
        return f"{self.since[0]}.{self.since[1]}" + (" (estimated)" if self.estimated else "")

    def text(self, kernel: tuple[int, int]) -> str:
        return (f"needs >= {self.since_text} for {self.what} {self.name} "
                f"(this kernel: {kernel[0]}.{kernel[1]})")  # fmt: skip


def _feature_need(what: str, feat: F.Feature | None) -> Need | None:
    return Need(what, feat.name, feat.since, feat.estimated) if feat else None


def _newest(needs: list[Need | None]) -> Need | None:
    found = [n for n in needs if n is not None]
    return max(found, key=lambda n: n.since) if found else None


def _helper_ids(line: str) -> list[tuple[str, int]]:
    """(name, id) of every helper a log line names (`bpf_x#N` or `unknown#N`; not
    `arg#0` or `func#1`), poisoned ids (libbpf's markers for a failed relocation, a
    missing map or kfunc) left out."""
    out = []
    for m in _HELPER_REF.finditer(line):
        hid = int(m.group(2))
        if hid == CORE_POISON or hid >= MAP_POISON_BASE:
            continue
        if m.group(1) != "unknown" and not m.group(1).startswith("bpf_"):
            continue
        if (m.group(1), hid) not in out:
            out.append((m.group(1), hid))
    return out


def _run_release(releases: list[str]) -> tuple[int, int] | None:
    parsed = []
    for r in releases:
        try:
            parsed.append(F.parse_release(str(r)))
        except ValueError:
            continue
    return min(parsed) if parsed else None


def _run_need(what: str, name: str, kernels_with: list[str]) -> Need | None:
    """A need judged from the run's kernels (their BTF): the oldest that has it."""
    since = _run_release(kernels_with)
    where = ", ".join(kernels_with)
    return Need(what, name, since, where=f"in the BTF of {where} of this run") if since else None


def find_need(v: Verdict, f: Facts) -> Need | None:
    """The feature whose absence the verdict's rule found, from the facts table."""
    rule = v.rule or ""
    line = v.evidence or ""
    if rule in ("map-type", "transport-map"):
        mf = map_failure(f)
        return _feature_need("map type", F.map_type(mf.type)) if mf and mf.type else None
    if rule in ("unknown-helper", "transport-helper"):
        for msg in (HELPER_INVALID_FUNC, HELPER_UNKNOWN_FUNC):
            m = msg.rx.search(line)
            if m:
                return _feature_need("helper", F.helper(int(m.group("id"))))
        return None
    if rule in ("helper-probe", "callback-helper"):
        missing = [p.name or p.id for p in f.helper_probes() if p.supported is False]
        needs = [_feature_need("helper", F.helper(h)) for h in missing if h is not None]
        if not needs and rule == "callback-helper":
            called = set(f.called_helpers(f.program)).intersection(CALLBACK_HELPERS)
            needs = [_feature_need("helper", F.helper(h)) for h in called]
        return _newest(needs)
    if rule == "prog-type":
        return _feature_need("program type", F.program_type(f.prog_type or ""))
    if rule == "kfunc":
        m = _QUOTED.search(line)
        return _feature_need("kfunc", F.kfunc(m.group(1))) if m else None
    if rule in ("load-attach-type", "attach-unsupported"):
        sdef = F.section_def(f.entry.section or "") if f.entry else None
        atype = sdef.attach_type if sdef else None
        return _feature_need("attach type", F.attach_type(atype)) if atype else None
    if rule in ("load-attach-target", "attach-target-missing"):
        detail = _detail(f.finding("attach_target_missing", v.program))
        with_it = _releases(detail.get("kernels_with"))
        return _run_need("attach target", str(detail.get("target")), with_it) if with_it else None
    if rule == "struct-ops-type":
        for item in f.setup:
            detail = _detail(item)
            struct, with_it = str(detail.get("struct") or ""), _releases(detail.get("kernels_with"))
            if item.get("kind") == "struct_ops" and struct and with_it and struct in line:
                return _run_need("struct_ops struct", struct, with_it)
    return None


def _detail(finding: object) -> dict[str, object]:
    """A finding's detail mapping ({} when absent or not one: stored data, read defensively)."""
    detail = finding.get("detail") if isinstance(finding, dict) else None
    return detail if isinstance(detail, dict) else {}


def _releases(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


# --- helpers by name, and what produced them -------------------------------------------------


def _table_name(hid: int) -> str | None:
    """The validator's name for a helper id the facts table lacks (None if it has none)."""
    from bpfcompat.validator import helper_name_from_id

    name = helper_name_from_id(hid)
    return None if name.startswith("helper#") else name


def _macro_of(helper: str) -> tuple[str, F.Rewrite] | None:
    """The bpf_helpers.h macro that expands to `helper` (bpf_printk -> bpf_trace_vprintk)."""
    for rw in F.libbpf_rewrites():
        if rw.stage != "compile":
            continue
        for macro, target in rw.helpers.items():
            if target == helper:
                return macro, rw
    return None


def _rewritten_from(helper: str, called: tuple[str, ...]) -> tuple[str, F.Rewrite] | None:
    """The helper the object calls that libbpf rewrites at load time into `helper`."""
    for rw in F.libbpf_rewrites():
        if rw.stage != "load":
            continue
        for original, target in rw.helpers.items():
            if target == helper and original in called:
                return original, rw
    return None


def helper_notes(v: Verdict, f: Facts, pin: Pinpoint | None) -> list[str]:
    """Each helper the evidence (or the failing instruction) names, in the user's terms."""
    refs = _helper_ids(v.evidence or "")
    for ref in _helper_ids(pin.instruction or "") if pin else []:
        if ref not in refs:
            refs.append(ref)
    called = f.called_helpers(v.program)
    notes = []
    for name, hid in refs:
        feat = F.helper(hid)
        real = feat.name if feat else (name if name != "unknown" else _table_name(hid))
        if real is None:
            notes.append(f"{name}#{hid} is a helper id newer than bpfcompat's facts table")
            continue
        since = f" (Linux {feat.since_text})" if feat else ""
        text = f"{name}#{hid} is {real}{since}" if name == "unknown" else ""
        macro = _macro_of(real)
        rewrite = _rewritten_from(real, called) if called and real not in called else None
        if macro:
            at = _at(pin) if pin and pin.source and macro[0] in pin.source else ""
            what = f"{real}{since}" if not text else ""
            # The verifier's source line shows the macro: say so; else it is the usual origin.
            origin = f"pulled in by {macro[0]}{at}" if at else f"most likely from {macro[0]}"
            text = (f"{text}, " if text else f"{what} ") + (
                f"{origin} (a macro of libbpf's bpf_helpers.h): {macro[1].meaning}"
            )
        elif rewrite:
            original = rewrite[0]
            text = (f"{text}; " if text else "") + (
                f"the object calls {original}, not {real}: libbpf rewrote the call because "
                f"its own probe of {original} failed on this kernel"
            )
            if f.locked_down:
                text += f" (lockdown={f.lockdown} withholds both, so the rewrite cannot help)"
        if text:
            notes.append(text)
    return notes


# --- remediation for this cell ------------------------------------------------------------------


def _at(pin: Pinpoint | None) -> str:
    """` at file.c:30 `source`` for a pinpoint with a source line, else ""."""
    if not pin or not pin.source:
        return ""
    return f" at {pin.location + ' ' if pin.location else ''}`{pin.source}`"


def _verifier_fix(v: Verdict, pin: Pinpoint, generic: str) -> str:
    prog = v.program or pin.program or "the program"
    reason = v.evidence or ""
    hint = next((fmt.format(**m.groupdict()) for rx, fmt in VERIFIER_HINTS
                 if (m := rx.search(reason))), None)  # fmt: skip
    state = f" (registers before it: {pin.state})" if pin.state else ""
    insn = f"instruction {pin.insn} `{pin.instruction}`{state}"
    if v.code == "VERIFIER_LIMIT":
        where = f"{_at(pin).strip()} " if pin.source else ""
        return f"{prog} hits a verifier limit {where}at {insn}. {generic}"
    where = _at(pin) or f" at instruction {pin.insn}"
    said = f"the verifier refused {insn}: {reason}"
    return f"Fix {prog}{where}: {said}" + (f"; {hint}." if hint else f". {generic}")


def _variant_snippet(program: str | None, helper: str) -> str:
    group = program or "GROUP"
    return (f"program_variants:\n  - group: {group}\n    programs:\n"
            f"      - {{name: {group}, requires_helper: {helper}}}\n"
            "      - {name: FALLBACK_PROGRAM}")  # fmt: skip


def _helper_fix(v: Verdict, need: Need, pin: Pinpoint | None) -> str:
    helper, since = need.name, need.since_text
    macro = _macro_of(helper)
    if macro and macro[0] == "bpf_printk":
        return (f"Keep the bpf_printk{_at(pin)} to 3 format arguments (it then calls "
                f"bpf_trace_printk, 4.1), or require Linux {since}.")  # fmt: skip
    if macro:
        return (f"{macro[0]}{_at(pin)} has no fallback: leave it out where {helper} is "
                f"missing, or require Linux {since}.")  # fmt: skip
    fallback = HELPER_FALLBACKS.get(helper)
    use = f"uses {fallback}" if fallback else f"does without {helper}"
    return (f"{helper} is Linux {since}: add a fallback program that {use}, and let the "
            f"loader pick it where {helper} is missing ({_VARIANT_FIX}):\n"
            f"{_variant_snippet(v.program, helper)}\nor require Linux {since}.")  # fmt: skip


def _other_fix(v: Verdict, f: Facts, pin: Pinpoint | None) -> str | None:
    """Cell-specific fixes for failures that are not a missing feature."""
    prog = v.program or "the program"
    line = v.evidence or ""
    called = [name for name, _ in _helper_ids(pin.instruction or "")] if pin else []
    if v.code == "HELPER_NOT_ALLOWED" and called:
        helper = called[0]
        types = f.result.capabilities.helper_program_types.get(helper) or ()
        may = f" ({', '.join(types[:6])}{', ...' if len(types) > 6 else ''})" if types else ""
        return (f"{helper} may not be called from {f.prog_type or 'this'} programs "
                f"({prog}{_at(pin)}): call it from a program type that may{may}, or use "
                "another helper.")  # fmt: skip
    if v.code == "LICENSE_INCOMPATIBLE" and called:
        return (f"{called[0]} is GPL-only ({prog}{_at(pin)}): use a GPL-compatible license "
                f'string ("GPL", "Dual BSD/GPL"), or do without {called[0]}.')  # fmt: skip
    if v.code == "CORE_RELOCATION_FAILURE":
        m = re.search(r"\] ((?:struct |union |enum )?[\w.:]{1,128}) \(", line)
        if m:
            return (f"{m.group(1)} does not exist in this kernel's BTF: guard the access with "
                    "bpf_core_field_exists()/bpf_core_type_exists() and a fallback, or add a "
                    "___flavor type matching this kernel's layout.")  # fmt: skip
    if v.rule == "attach-target-missing":
        m = re.search(r"'([^'+]{1,128})\+0x[0-9a-f]+'|tracepoint '([^']{1,128})'", line)
        if m:
            target = m.group(1) or m.group(2)
            return (f"{target} does not exist on this kernel: attach {prog} to something it "
                    "has (/proc/kallsyms, its BTF), or make the attach optional (manifest "
                    f"programs: [{{name: {prog}, attach: {{required: false}}}}]).")  # fmt: skip
    return None


def remediation(v: Verdict, f: Facts, need: Need | None, pin: Pinpoint | None) -> str | None:
    """This cell's own fix, or None to keep the rule's."""
    rule = REGISTRY.get(v.rule or "")
    generic = rule.remediation if rule else ""
    prog = v.program or "the program"
    if need is not None:
        since = need.since_text
        if need.what == "map type":
            mf = map_failure(f)
            name = mf.name if mf else "the map"
            alt = MAP_ALTERNATIVES.get(need.name)
            instead = f" and use {alt} instead" if alt else ""
            return (f"Map {name} is a {need.name} map (Linux {since}): where the type is "
                    f"missing, skip creating it (bpf_map__set_autocreate(map, false)){instead}, "
                    f"or require Linux {since}.")  # fmt: skip
        if need.what == "helper":
            return _helper_fix(v, need, pin)
        if need.what == "kfunc":
            return (f"Declare {need.name} __weak and call it only where "
                    f"bpf_ksym_exists({need.name}) is true (libbpf then loads the program "
                    f"without it where it is missing), or require Linux {since}.")  # fmt: skip
        if need.what == "program type":
            off = f"[{{name: {prog}, autoload: false}}]"
            return (f"Program {prog} is a {need.name} program (Linux {since}): require Linux "
                    f"{since}, or leave it out where the type is missing (manifest programs: "
                    f"{off} leaves it out on every kernel).")  # fmt: skip
        if need.what in ("attach target", "struct_ops struct"):
            return (
                f"{need.name} is {need.where}: require one of those kernels, or leave "
                f"{prog if need.what == 'attach target' else 'the struct_ops map'} out "
                "where it is missing (autoload: false / bpf_map__set_autocreate)."
            )
        if need.what == "attach type":
            return (
                f"Attach type {need.name} is Linux {since}: use one this kernel has, or "
                f"require Linux {since}."
            )
    if pin is not None and v.code in ("VERIFIER_REJECTION", "VERIFIER_LIMIT"):
        return _verifier_fix(v, pin, generic)
    return _other_fix(v, f, pin)


# --- the whole step ------------------------------------------------------------------------------


def explain(v: Verdict, f: Facts) -> Verdict:
    """`v` with needs, named helpers, pinpoint and a cell-specific remediation added."""
    if v.status != "fail":
        return v
    pin = pinpoint(f, v.evidence, v.program) if f.stage == "load" else None
    need = find_need(v, f)
    kernel = f.version
    needs = need.text(kernel) if need and kernel and kernel < need.since else None
    notes = helper_notes(v, f, pin)
    if need and kernel and kernel >= need.since:
        notes.append(f"{need.what} {need.name} is upstream since {need.since_text}, which "
                     "this kernel is not older than: its build lacks it, or the cause is "
                     "another")  # fmt: skip
    detail = "; ".join(x for x in (v.detail, *notes) if x) or None
    rule = REGISTRY.get(v.rule or "")
    own = rule is not None and v.remediation not in (None, rule.remediation)
    fix = None if own else remediation(v, f, need if needs else None, pin)
    return v.model_copy(update={
        "needs": needs, "pinpoint": pin, "detail": detail,
        "remediation": fix or v.remediation,
    })  # fmt: skip
