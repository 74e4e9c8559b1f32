"""`bpfcompat inspect`: one object read statically, as JSON and as text.

The JSON shape is a contract (keys are only ever added): `artifact`, `floor`,
`floor_reason`, `requirements` [{kind, name, since, programs, ...}], `loader_setup`
[{kind, subject, level, why, manifest, manifest_lines}], then the details (programs, maps,
globals, externs, CO-RE relocations, licence, BTF, kernel checks, problems).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bpfcompat.analysis import features as F
from bpfcompat.analysis import requirements as R
from bpfcompat.analysis.insns import Uses, analyse
from bpfcompat.analysis.kernelset import KernelSet
from bpfcompat.analysis.loader import (
    DeclaredManifest,
    Finding,
    loader_setup,
    mark_declared,
    program_types,
)
from bpfcompat.analysis.objfile import MapDef, ObjectFile, read_object
from bpfcompat.validator import btf as B

MAX_CORE_RECORDS = 200  # CO-RE relocations listed one by one; the counts cover the rest
MAX_PROBLEMS = 50  # partial-read problems listed per artifact
_FIELD_KINDS = range(0, 6)
_ENUM_KINDS = (10, 11)


def inspect_object(
    path: Path,
    kernels: KernelSet | None = None,
    manifest: DeclaredManifest | None = None,
    data: bytes | None = None,
) -> dict[str, Any]:
    """Everything `inspect` reports about one artifact; never raises for a bad artifact.
    `manifest`: the artifact's manifest, whose declared steps the findings then mark;
    `data`: its bytes, when already read."""
    started = time.monotonic()
    report: dict[str, Any] = {
        "artifact": str(path),
        "readable": False,
        "error": None,
        "floor": None,
        "floor_reason": None,
        "requirements": [],
        "loader_setup": [],
        "manifest": manifest.where if manifest is not None else None,
    }
    try:
        obj = read_object(path, data)
    except ValueError as exc:
        report["error"] = str(exc)
        report["seconds"] = round(time.monotonic() - started, 4)
        return report
    report["readable"] = True
    problems = list(obj.problems)
    if obj.btf is None:
        problems.insert(
            0, "no .BTF section: BTF-defined maps, globals, externs and CO-RE cannot be read"
        )
    uses: dict[str, Uses] = {}
    try:
        uses = analyse(obj)
    except (ValueError, IndexError) as exc:
        problems.append(f"instructions: {exc}")
    types = program_types(obj)
    reqs = R.collect(obj, uses, {k: (v[0], v[1]) for k, v in types.items()})
    since, top = R.floor(reqs)
    findings = loader_setup(obj, uses, types, kernels)
    if manifest is not None and manifest.error is not None:
        problems.append(f"manifest: {manifest.error}")
    elif manifest is not None:
        mark_declared(findings, manifest.manifest, manifest.where)
    used_only = [r for r in reqs if r.programs or r.kind != "map_type"]
    lower, lower_top = R.floor(used_only)
    if top is not None and top.kind == "map_type" and not top.programs and lower != since:
        findings.append(_unused_map_finding(top, lower, lower_top))
    programs = _programs(obj, uses, types)
    for entry in programs:
        entry["floor"] = R.floor([r for r in reqs if entry["name"] in r.programs])[0]
    report.update(
        floor=since,
        floor_reason=R.floor_reason(top),
        floor_requirement=top.as_dict() if top else None,
        requirements=[r.as_dict() for r in reqs],
        loader_setup=[f.as_dict() for f in findings],
        issues=R.issues(obj, uses),
        license=obj.license,
        btf=_btf_summary(obj),
        programs=programs,
        maps=[_map(m) for m in obj.maps],
        globals=[vars(g) for g in obj.globals],
        externs={
            "kconfig": [vars(e) for e in obj.externs if e.section == ".kconfig"],
            "ksyms": [vars(e) for e in obj.externs if e.section == ".ksyms"],
        },
        core_relocations=_core(obj, problems),
        kernel_checks=_kernel_checks(kernels, obj),
        floor_without_unused_maps=lower if lower != since else None,
        problems=problems[:MAX_PROBLEMS] + (["..."] if len(problems) > MAX_PROBLEMS else []),
    )
    report["seconds"] = round(time.monotonic() - started, 4)
    return report


def _unused_map_finding(
    top: R.Requirement, lower: str | None, lower_top: R.Requirement | None
) -> Finding:
    """The floor is set by a map no program uses: created by a plain libbpf load all the
    same, but typically a feature probe whose creation the project's loader turns off."""
    maps = (top.note or "").removeprefix("maps: ")
    return Finding(
        "map_unused",
        maps,
        f"map type {top.name} ({top.since}) sets the floor but no program uses {maps}: a plain "
        f"libbpf load still creates it and fails before {top.since}; a loader that turns its "
        "creation off (bpf_map__set_autocreate) needs only "
        + (f"{lower} ({R.floor_reason(lower_top)})" if lower else "what the programs need"),
        "info",
        detail={"map_type": top.name, "since": top.since, "floor_without": lower},
    )


def _btf_summary(obj: ObjectFile) -> dict[str, Any]:
    out: dict[str, Any] = {"present": obj.btf is not None, "ext": obj.btf_ext is not None}
    if obj.btf is not None:
        out.update(B.describe(obj.btf))
    if obj.btf_ext is not None:
        out.update(obj.btf_ext.counts())
    return out


def _programs(
    obj: ObjectFile, uses: dict[str, Uses], types: dict[str, tuple[str | None, str | None, str]]
) -> list[dict[str, Any]]:
    out = []
    for prog in obj.programs:
        use = uses.get(prog.name, Uses())
        ptype, atype, source = types.get(prog.name, (None, None, "unknown"))
        sdef = F.section_def(prog.section)
        target = None
        if sdef is not None:
            base = prog.section.lstrip("?")
            stem = sdef.sec.rstrip("+/")
            target = base[len(stem) + 1 :] if len(base) > len(stem) else None
        helpers = []
        for hid in use.helpers:
            feat = F.helper(hid)
            helpers.append(
                {
                    "id": hid,
                    "name": feat.name if feat else f"helper#{hid}",
                    "since": feat.since_text if feat else None,
                }
            )
        out.append(
            {
                "name": prog.name,
                "section": prog.section,
                "type": ptype,
                "expected_attach_type": atype,
                "type_source": source,
                "attach_target": target,
                "autoload": not prog.section.startswith("?"),
                "insns": use.insns,
                "helpers": helpers,
                "kfuncs": [
                    {"name": k, "since": (f.since_text if (f := F.kfunc(k)) else None)}
                    for k in use.kfuncs
                ],
                "maps": list(use.maps),
                "data_sections": list(use.data_sections),
                "features": sorted(use.features),
            }
        )
    return out


def _map(m: MapDef) -> dict[str, Any]:
    feat = F.map_type(m.type) if m.type is not None else None
    out = {
        "name": m.name,
        "section": m.section,
        "type": feat.name if feat else (f"type#{m.type}" if m.type is not None else None),
        "type_id": m.type,
        "key_size": m.key_size,
        "value_size": m.value_size,
        "max_entries": m.max_entries,
        "map_flags": m.map_flags,
        "pinning": m.pinning,
        "key_type": m.key_type,
        "value_type": m.value_type,
        "initial_values": m.initial_values,
    }
    if m.inner is not None:
        out["inner"] = _map(m.inner)
    return out


def _core(obj: ObjectFile, problems: list[str]) -> dict[str, Any]:
    ext, btf = obj.btf_ext, obj.btf
    out: dict[str, Any] = {"count": 0, "kinds": {}, "types": [], "records": []}
    if ext is None or btf is None:
        return out
    try:
        relos = [(sec, r) for sec, rs in ext.core_relos.items() for r in rs]
    except ValueError as exc:
        problems.append(f"CO-RE relocations: {exc}")
        return out
    kinds: Counter[str] = Counter(r.kind_name for _sec, r in relos)
    roots: dict[int, tuple[int, str] | None] = {}  # local type id -> (root id, name)
    for sec, r in relos:
        if r.type_id not in roots:
            try:
                root = btf.resolve(r.type_id)
                roots[r.type_id] = (root, btf.name(root).split("___")[0] or btf.render(root))
            except ValueError as exc:
                roots[r.type_id] = None
                problems.append(f"CO-RE relocation at {sec}+{r.insn_off}: {exc}")
        found = roots[r.type_id]
        if found is None or len(out["records"]) >= MAX_CORE_RECORDS:
            continue
        root, tname = found
        try:
            spec = _spec(btf, root, r.access, r.kind)
        except ValueError as exc:
            problems.append(f"CO-RE relocation at {sec}+{r.insn_off}: {exc}")
            continue
        out["records"].append(
            {
                "section": sec,
                "insn": r.insn_off // 8,
                "type": tname,
                "kind": r.kind_name,
                "access": r.access,
                "spec": spec,
            }
        )
    types = {found[1]: None for found in roots.values() if found is not None}
    out.update(count=len(relos), kinds=dict(kinds), types=list(types))
    return out


def _spec(btf: B.Btf, root: int, access: str, kind: int) -> str:
    """The relocation as libbpf names it: "struct task_struct.tgid", "enum x::VALUE"."""
    base = btf.render(root)
    if kind in _FIELD_KINDS:
        return base + btf.field_path(root, access)
    if kind in _ENUM_KINDS and btf.kind(root) in (B.ENUM, B.ENUM64) and access.isdigit():
        values = btf.enum_values(root)
        index = int(access)
        return f"{base}::{values[index][0]}" if index < len(values) else base
    return base


def _kernel_checks(kernels: KernelSet | None, obj: ObjectFile) -> dict[str, Any]:
    needed = any(
        (d := F.section_def(p.section)) is not None and d.attach_btf for p in obj.programs
    ) or any(m.type == 26 for m in obj.maps)
    if not needed:
        return {"needed": False, "checked": False, "kernels": [], "unchecked": []}
    if kernels is None:
        return {"needed": True, "checked": False, "kernels": [], "unchecked": ["not requested"]}
    kernels.load()
    return {
        "needed": True,
        "checked": bool(kernels.kernels),
        "kernels": [f"{k.id} ({k.release})" for k in kernels.kernels],
        "unchecked": list(kernels.unchecked),
    }


# -- text ----------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean(text: Any) -> str:
    """Artifact-controlled text for a terminal: control characters escaped, one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def _sizes(m: dict[str, Any]) -> str:
    """A map's sizes as written; an unset one is the loader's to fill (libbpf sizes a perf
    event array by itself: 4-byte keys and values, one entry per possible CPU)."""
    perf = m["type"] == "perf_event_array"
    if m["type"] in ("ringbuf", "user_ringbuf"):  # no keys or values: a size in bytes
        return f"max_entries {m['max_entries'] if m['max_entries'] is not None else 'unset'}"
    parts = []
    for label, key, auto in (("key", "key_size", "4"), ("value", "value_size", "4")):
        value = m[key]
        parts.append(f"{label} {value if value is not None else (auto if perf else 'unset')}")
    entries = m["max_entries"]
    if entries is None:
        entries = "unset (libbpf: one per CPU)" if perf else "unset"
    return "  ".join(parts) + f"  max_entries {entries}"


def render_text(report: dict[str, Any]) -> str:
    lines = [clean(report["artifact"])]
    if not report["readable"]:
        lines.append(f"  cannot read: {clean(report['error'])}")
        return "\n".join(lines)
    for problem in report["problems"]:
        lines.append(f"  note: {clean(problem)}")
    floor = report["floor"] or "unknown"
    lines.append(
        f"  floor: Linux {floor}"
        + (f": {clean(report['floor_reason'])}" if report["floor_reason"] else "")
    )
    btf = report["btf"]
    btf_text = (
        f"{btf.get('types', 0)} types"
        + (
            f", .BTF.ext: {btf.get('func_info', 0)} func / {btf.get('line_info', 0)} line / "
            f"{btf.get('core_relo', 0)} CO-RE records"
            if btf["ext"]
            else ", no .BTF.ext"
        )
        if btf["present"]
        else "none"
    )
    lines.append(f"  licence: {clean(report['license'])}    BTF: {btf_text}")
    lines.append("  programs:")
    for p in report["programs"]:
        ptype = p["type"] or "?"
        if p["type_source"] == "suggested":
            ptype += " (suggested)"
        lines.append(
            f'    {clean(p["name"])}  SEC("{clean(p["section"])}")  {ptype}'
            + (f"/{p['expected_attach_type']}" if p["expected_attach_type"] else "")
            + f"  {p['insns']} insns  floor {p['floor'] or '?'}"
        )
        if p["helpers"]:
            lines.append(
                "      helpers: "
                + ", ".join(f"{h['name']}#{h['id']} ({h['since'] or '?'})" for h in p["helpers"])
            )
        if p["kfuncs"]:
            lines.append(
                "      kfuncs: "
                + ", ".join(f"{clean(k['name'])} ({k['since'] or '?'})" for k in p["kfuncs"])
            )
        if p["maps"]:
            lines.append("      maps: " + ", ".join(clean(m) for m in p["maps"]))
        if p["features"]:
            lines.append("      ISA/features: " + ", ".join(p["features"]))
    if report["maps"]:
        lines.append("  maps:")
        for m in report["maps"]:
            inner = f"  inner: {m['inner']['type']}" if m.get("inner") else ""
            lines.append(
                f"    {clean(m['name'])}  {m['type']}  {_sizes(m)}"
                + (f"  flags {m['map_flags']:#x}" if m["map_flags"] else "")
                + ("  pinned" if m["pinning"] else "")
                + inner
                + ('  (legacy SEC("maps"))' if m["section"] == "maps" else "")
            )
    ext = report["externs"]
    for label, key in (("kconfig externs", "kconfig"), ("ksyms", "ksyms")):
        if ext[key]:
            lines.append(
                f"  {label}: "
                + ", ".join(
                    f"{clean(e['name'])}: {clean(e['type'])}" + (" (weak)" if e["weak"] else "")
                    for e in ext[key]
                )
            )
    if report["globals"]:
        lines.append("  globals:")
        for g in report["globals"]:
            lines.append(
                f"    {clean(g['section'])}: {clean(g['type'])} {clean(g['name'])}"
                f" ({g['size']} bytes"
                + (f", = {clean(repr(g['default']))})" if g["default"] is not None else ")")
            )
    core = report["core_relocations"]
    if core["count"]:
        kinds = ", ".join(f"{k} {n}" for k, n in core["kinds"].items())
        lines.append(f"  CO-RE relocations: {core['count']} ({kinds})")
        lines.append("    types: " + ", ".join(clean(t) for t in core["types"][:20]))
        specs = list(dict.fromkeys(r["spec"] for r in core["records"]))
        lines.append("    e.g. " + ", ".join(clean(s) for s in specs[:5]))
    lines.append("  requirements (since = first upstream release):")
    for r in report["requirements"]:
        mark = "" if r["sets_floor"] else "  [does not set the floor]"
        progs = ", ".join(clean(p) for p in r["programs"][:4])
        lines.append(
            f"    {r['since'] or '?':>5}  {r['kind']:12} {clean(r['name'])}"
            + (f"#{r['id']}" if r["kind"] == "helper" and "id" in r else "")
            + (f"  ({progs})" if progs else "")
            + mark
        )
        if r.get("note"):
            lines.append(f"           {clean(r['note'])}")
    lines += _text_findings(report)
    return "\n".join(lines)


def _text_findings(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if report["loader_setup"]:
        lines.append("  loader setup:")
        for f in report["loader_setup"]:
            level = f["level"] + (
                f", declared in {clean(f['declared_in'])}" if f["declared_in"] else ""
            )
            lines.append(f"    [{level}] {f['kind']} {clean(f['subject'])}: {clean(f['why'])}")
            for text in f["manifest_lines"]:
                lines.append(f"        {clean(text)}")
    else:
        lines.append("  loader setup: nothing beyond a plain libbpf open and load")
    for issue in report["issues"]:
        lines.append(f"  issue: {issue['kind']} {clean(issue['subject'])}: {clean(issue['why'])}")
    checks = report["kernel_checks"]
    if checks["needed"]:
        if checks["checked"]:
            lines.append("  kernel BTF checks: " + ", ".join(checks["kernels"]))
        if checks["unchecked"]:
            lines.append(
                "  not checked against: " + "; ".join(clean(u) for u in checks["unchecked"])
            )
    return lines
