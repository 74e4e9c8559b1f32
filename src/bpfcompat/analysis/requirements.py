"""What an object needs from a kernel, each need dated by features.yaml, and its floor.

A requirement names what the object uses in the terms the facts table indexes (a helper, a
map type, a kfunc, an ISA feature...), the release that introduced it and the programs
that need it. Not every use raises the floor: libbpf rewrites some of them on kernels that
lack them (bpf_probe_read_kernel becomes bpf_probe_read; FLOAT/DECL_TAG/... BTF kinds are
sanitised away), and a __weak kfunc is only called where it exists. Those are listed with
`sets_floor: false` and a note, so the floor is the oldest upstream release where nothing
the object needs is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bpfcompat.analysis import features as F
from bpfcompat.analysis.insns import Uses
from bpfcompat.analysis.objfile import MapDef, ObjectFile
from bpfcompat.validator import btf as B
from bpfcompat.validator.tables import helper_name_from_id

# include/linux/license.h license_is_gpl_compatible(): the strings the kernel accepts.
GPL_COMPATIBLE = frozenset(
    ("GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL", "Dual MPL/GPL")
)

# Attach types and program types whose loading needs a newer facility than the type
# itself names; the feature's meaning in features.yaml explains it better to a user.
_ATTACH_FEATURES = {"trace_kprobe_multi": "kprobe_multi", "trace_uprobe_multi": "uprobe_multi"}

# Special fields of map values (struct members by type name) and what they need.
_VALUE_FIELDS = {
    "bpf_spin_lock": "spin_lock",
    "bpf_timer": "timers",
    "bpf_list_head": "bpf_obj_new",
    "bpf_rb_root": "bpf_obj_new",
}
_KPTR_TAGS = frozenset(("kptr", "kptr_untrusted", "kptr_ref", "percpu_kptr"))

# BTF kinds libbpf rewrites away on kernels that lack them (features.yaml libbpf_rewrites).
_BTF_KIND_FEATURES = (
    (B.FUNC, "btf_func_info", "btf_sanitize_func"),
    (B.DATASEC, "btf_datasec", "btf_sanitize_datasec"),
    (B.FLOAT, "btf_float", "btf_sanitize_float"),
    (B.DECL_TAG, "btf_decl_tag", "btf_sanitize_decl_tag"),
    (B.TYPE_TAG, "btf_type_tag", "btf_sanitize_type_tag"),
    (B.ENUM64, "btf_enum64", "btf_sanitize_enum64"),
)
# Ties for the floor: the most concrete reason first.
_KIND_ORDER = ("program_type", "map_type", "helper", "kfunc", "attach_type", "feature")


@dataclass
class Requirement:
    kind: str
    name: str
    since: str | None
    programs: list[str] = field(default_factory=list)
    sets_floor: bool = True
    note: str | None = None
    id: int | None = None
    estimated: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "since": self.since,
            "programs": self.programs,
            "sets_floor": self.sets_floor,
        }
        if self.id is not None:
            out["id"] = self.id
        if self.note:
            out["note"] = self.note
        if self.estimated:
            out["estimated"] = True
        return out


class _Collector:
    """Requirements keyed by (kind, name): the same need from two programs is one row."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Requirement] = {}

    def add(
        self,
        feat: F.Feature | None,
        kind: str,
        name: str,
        programs: list[str],
        *,
        sets_floor: bool = True,
        note: str | None = None,
        ident: int | None = None,
    ) -> Requirement:
        key = (kind, name)
        row = self.rows.get(key)
        if row is None:
            row = Requirement(
                kind=kind,
                name=name,
                since=feat.since_text if feat else None,
                sets_floor=sets_floor and feat is not None,
                note=note if feat else note or f"{name} is not in bpfcompat's feature table",
                id=ident if ident is not None else (feat.id if feat else None),
                estimated=bool(feat and feat.estimated),
            )
            self.rows[key] = row
        else:
            row.sets_floor = row.sets_floor or (sets_floor and feat is not None)
        for prog in programs:
            if prog not in row.programs:
                row.programs.append(prog)
        return row

    def feature(self, key: str, programs: list[str], **kw: Any) -> Requirement:
        return self.add(F.feature(key), "feature", key, programs, **kw)


def collect(
    obj: ObjectFile, uses: dict[str, Uses], prog_types: dict[str, tuple[str | None, str | None]]
) -> list[Requirement]:
    """Every requirement of the object. `prog_types` maps a program to the (program type,
    expected attach type) a loader would use: libbpf's, or the suggested one."""
    c = _Collector()
    everyone = [p.name for p in obj.programs]
    _programs(c, obj, prog_types)
    kconfig = {e.name for e in obj.externs if e.section == ".kconfig"}
    data_sections: dict[str, None] = {}
    for prog, use in uses.items():
        _helpers(c, prog, use)
        for key in use.features:
            c.feature(key, [prog])
        data_sections.update(use.data_sections)
        if kconfig.intersection(use.externs):
            # libbpf keeps __kconfig values in its own .kconfig map: global data too.
            c.feature("global_data", [prog])
            data_sections[".kconfig"] = None
    if data_sections:
        c.rows[("feature", "global_data")].note = "uses " + ", ".join(data_sections)
    _kfuncs_and_ksyms(c, obj, uses)
    users = _map_users(uses)
    for mdef in obj.maps:
        _map(c, obj, mdef, users.get(mdef.name, []))
    _btf(c, obj, everyone)
    return sorted(c.rows.values(), key=_order)


def _order(r: Requirement) -> tuple[Any, ...]:
    """Floor-setting needs first, newest first: the top rows explain the floor."""
    major, minor = F.parse_release(r.since) if r.since else (0, 0)
    kind = _KIND_ORDER.index(r.kind) if r.kind in _KIND_ORDER else 99
    return (not r.sets_floor, -major, -minor, kind, r.name)


def floor(reqs: list[Requirement]) -> tuple[str | None, Requirement | None]:
    """The highest `since` among requirements that set the floor, and the one that sets it."""
    best: Requirement | None = None
    best_key: tuple[Any, ...] = ()
    for r in reqs:
        if not r.sets_floor or r.since is None:
            continue
        # Highest release first; on a tie, the most concrete kind of reason.
        key = (F.parse_release(r.since), -_KIND_ORDER.index(r.kind))
        if best is None or key > best_key:
            best, best_key = r, key
    return (best.since, best) if best else (None, None)


def floor_reason(req: Requirement | None) -> str | None:
    if req is None:
        return None
    what = req.kind.replace("_", " ")
    text = f"{what} {req.name} needs Linux {req.since}"
    if req.estimated:
        text += " (release estimated)"
    if req.programs:
        shown = ", ".join(req.programs[:3]) + (" ..." if len(req.programs) > 3 else "")
        text += f" (program{'s' if len(req.programs) > 1 else ''} {shown})"
    elif req.kind == "map_type":
        text += f" ({req.note or 'a map'}, used by no program)"
    return text


def _programs(
    c: _Collector, obj: ObjectFile, prog_types: dict[str, tuple[str | None, str | None]]
) -> None:
    for prog in obj.programs:
        ptype, atype = prog_types.get(prog.name, (None, None))
        sdef = F.section_def(prog.section)
        guessed = sdef is None or sdef.prog_type != ptype
        note = "type suggested from the section name: libbpf 1.5 cannot tell" if guessed else None
        if ptype:
            c.add(F.program_type(ptype), "program_type", ptype, [prog.name], note=note)
        if atype:
            opt = sdef is not None and "exp_attach_opt" in sdef.flags and not guessed
            c.add(
                F.attach_type(atype),
                "attach_type",
                atype,
                [prog.name],
                sets_floor=not opt,
                note=(
                    "libbpf drops expected_attach_type on kernels that reject it" if opt else note
                ),
            )
            if atype in _ATTACH_FEATURES:
                c.feature(_ATTACH_FEATURES[atype], [prog.name])
        if sdef is not None and sdef.sleepable:
            c.feature("sleepable", [prog.name])


def _helpers(c: _Collector, prog: str, use: Uses) -> None:
    fallback = F.libbpf_rewrite("probe_read_kernel_fallback")
    vprintk = F.libbpf_rewrite("bpf_printk_vprintk")
    for hid in use.helpers:
        feat = F.helper(hid)
        name = feat.name if feat else helper_name_from_id(hid)
        sets_floor, note = True, None
        if feat is None:
            note = f"helper id {hid} is unknown to bpfcompat's table (newer than it?)"
        elif fallback is not None and name in fallback.helpers:
            older = F.helper(fallback.helpers[name])
            sets_floor = False
            note = (
                f"libbpf rewrites it to {fallback.helpers[name]}"
                f" ({older.since_text if older else '?'}) on kernels without it"
            )
        elif vprintk is not None and name == "bpf_trace_vprintk":
            note = (
                "what bpf_printk() becomes with more than 3 arguments; keep to 3 arguments "
                "(bpf_trace_printk, 4.1) to run on older kernels"
            )
        elif name == "bpf_trace_printk":
            note = "bpf_printk() with up to 3 arguments"
        c.add(feat, "helper", name, [prog], sets_floor=sets_floor, note=note, ident=hid)


def _kfuncs_and_ksyms(c: _Collector, obj: ObjectFile, uses: dict[str, Uses]) -> None:
    externs = {e.name: e for e in obj.externs}
    for prog, use in uses.items():
        strong_kfunc = False
        for name in use.kfuncs:
            ext = externs.get(name)
            weak = bool(ext and ext.weak)
            strong_kfunc = strong_kfunc or not weak
            c.add(
                F.kfunc(name),
                "kfunc",
                name,
                [prog],
                sets_floor=not weak,
                note=(
                    "declared __weak: libbpf loads the program without it where it is "
                    "missing (guard the call with bpf_ksym_exists())"
                    if weak
                    else None
                ),
            )
        if use.kfuncs:
            c.feature("kfunc_calls", [prog], sets_floor=strong_kfunc)
        for name in use.externs:
            ext = externs.get(name)
            if ext is None or ext.section != ".ksyms" or ext.kind != "var":
                continue
            if ext.typed:
                c.feature(
                    "typed_ksyms",
                    [prog],
                    sets_floor=not ext.weak,
                    note=f"typed __ksym variables ({name} ...) are found through kernel BTF",
                )


def _map_users(uses: dict[str, Uses]) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for prog, use in uses.items():
        for name in use.maps:
            users.setdefault(name, []).append(prog)
    return users


def _map(c: _Collector, obj: ObjectFile, mdef: MapDef, programs: list[str]) -> None:
    for m in (mdef, mdef.inner):
        if m is None or m.type is None:
            continue
        feat = F.map_type(m.type)
        name = feat.name if feat else f"map_type#{m.type}"
        row = c.add(feat, "map_type", name, programs)
        label = m.name if m is mdef else f"{mdef.name} (inner map)"
        row.note = f"{row.note}, {label}" if row.note else f"maps: {label}"
    if obj.btf is not None and mdef.value_type_id is not None:
        try:
            needs = _value_fields(obj.btf, mdef.value_type_id)
        except ValueError:
            needs = set()
        for key in sorted(needs):
            c.feature(key, programs, note=f"in the value of map {mdef.name}")


def _value_fields(btf: B.Btf, tid: int) -> set[str]:
    """Special kernel objects embedded in a map value (spin locks, timers, kptrs...)."""
    found: set[str] = set()
    todo = [(tid, 0)]
    budget = 4096  # members visited: bounds hostile or enormous value types
    while todo and budget > 0:
        cur, depth = todo.pop()
        base = btf.resolve(cur)
        kind = btf.kind(base)
        if kind == B.ARRAY:
            todo.append((btf.array(base)[0], depth))
            continue
        if kind not in (B.STRUCT, B.UNION) or depth > 3:
            continue
        name = btf.name(base)
        if name in _VALUE_FIELDS:
            found.add(_VALUE_FIELDS[name])
            continue
        for _mname, mtype, _off, _bits in btf.members(base):
            budget -= 1
            if _has_kptr_tag(btf, mtype):
                found.add("kptrs")
            todo.append((mtype, depth + 1))
    return found


def _has_kptr_tag(btf: B.Btf, tid: int) -> bool:
    for _ in range(B.MAX_DEPTH):
        kind = btf.kind(tid)
        if kind == B.TYPE_TAG and btf.name(tid) in _KPTR_TAGS:
            return True
        if kind not in (B.PTR, B.TYPE_TAG, B.CONST, B.VOLATILE, B.TYPEDEF, B.RESTRICT):
            return False
        tid = btf.size_or_type(tid)
    return False


def _btf(c: _Collector, obj: ObjectFile, everyone: list[str]) -> None:
    btf = obj.btf
    if btf is None:
        return
    needs_btf = any(m.type == 26 for m in obj.maps)  # struct_ops cannot load without BTF
    c.feature(
        "btf",
        everyone,
        sets_floor=needs_btf,
        note=None if needs_btf else "libbpf loads the object without its BTF where unsupported",
    )
    counts = btf.kind_counts()
    for kind, key, rewrite in _BTF_KIND_FEATURES:
        if counts.get(B.KIND_NAMES[kind]):
            rw = F.libbpf_rewrite(rewrite)
            c.feature(
                key,
                everyone,
                sets_floor=False,
                note=f"libbpf sanitises it on older kernels: {rw.meaning}" if rw else None,
            )
    ext = obj.btf_ext
    if ext is None:
        return
    relos = [r for rs in ext.core_relos.values() for r in rs if r.kind != 6]  # 6: local id
    if relos:
        c.feature(
            "core",
            _core_programs(obj),
            note=(
                f"{len(relos)} CO-RE relocations resolved against kernel BTF "
                "(/sys/kernel/btf/vmlinux, or an external BTF given to libbpf)"
            ),
        )


def _core_programs(obj: ObjectFile) -> list[str]:
    """Programs whose own section carries CO-RE relocations (subprograms are not traced)."""
    ext = obj.btf_ext
    sections = set(ext.core_relos) if ext is not None else set()
    progs = [p.name for p in obj.programs if p.section in sections]
    return progs or [p.name for p in obj.programs]


def issues(obj: ObjectFile, uses: dict[str, Uses]) -> list[dict[str, str]]:
    """Defects of the artifact itself that no kernel or loader setting fixes."""
    out: list[dict[str, str]] = []
    lic = obj.license
    gpl = lic in GPL_COMPATIBLE
    if lic is None and obj.programs:
        out.append(
            {
                "kind": "no_license",
                "subject": "license",
                "why": "no license section: GPL-only helpers and every kfunc are refused",
            }
        )
    for prog, use in uses.items():
        if gpl:
            continue
        gpl_helpers = [f.name for h in use.helpers if (f := F.helper(h)) is not None and f.gpl_only]
        if gpl_helpers or use.kfuncs:
            what = ", ".join(gpl_helpers + list(use.kfuncs)[:5])
            out.append(
                {
                    "kind": "gpl_only_with_non_gpl_license",
                    "subject": prog,
                    "why": f"licence {lic!r} is not GPL-compatible but the program calls "
                    f"GPL-only {what}: every kernel refuses the load",
                }
            )
    return out
