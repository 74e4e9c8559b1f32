"""`bpfcompat manifest suggest`: a starting manifest from an object's loader findings.

Required steps become active entries; guessed values are marked so, and values only a
person can supply (the real attach target of a placeholder, a program type nobody can
infer) stay commented out beside a safe active choice (autoload: false), so the output
always parses and never claims more than was read from the object.
"""

from __future__ import annotations

from typing import Any

from bpfcompat.analysis.loader import scalar

# Values loader findings use where only a person knows the answer.
PLACEHOLDERS = frozenset(("FUNCTION", "PROG_TYPE", "TARGET.bpf.o", "PROGRAM"))
_FILL_IN = {
    "attach_target": "the function your loader attaches it to; then drop autoload: false",
    "type": "the program type your loader sets",
    "attach_target_program": "the object and program that hold the function",
}


def _has_placeholder(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_placeholder(v) for v in value.values())
    return value in PLACEHOLDERS


def suggest_manifest(report: dict[str, Any]) -> str:
    """YAML text with comments; `report` is inspect_object()'s result for a readable object."""
    lines = [
        f"# Starting manifest for {_comment(report['artifact'])}, from bpfcompat inspect.",
        f"# Floor: Linux {report.get('floor') or 'unknown'}"
        + (f": {_comment(report['floor_reason'])}" if report.get("floor_reason") else ""),
        "# Review every value marked 'guess' and every commented-out line.",
    ]
    maps: dict[str, dict[str, Any]] = {}
    programs: dict[str, dict[str, Any]] = {}
    why: dict[tuple[str, str], list[str]] = {}
    notes: dict[tuple[str, str, str], str] = {}
    globals_: list[tuple[str, Any, str]] = []
    for f in report.get("loader_setup", []):
        frag = f.get("manifest") or {}
        for section, store in (("maps", maps), ("programs", programs)):
            for entry in frag.get(section, []):
                name = entry["name"]
                merged = store.setdefault(name, {"name": name})
                for key, value in entry.items():
                    merged.setdefault(key, value)
                why.setdefault((section, name), []).append(f"{f['kind']}: {f['why']}")
                for line in f.get("manifest_lines", []):
                    key, sep, rest = line.strip().lstrip("- ").partition(":")
                    if sep and "#" in rest:
                        notes[(section, name, key)] = rest.split("#", 1)[1].strip()
        detail = f.get("detail") or {}
        for var, value in (frag.get("globals") or {}).items():
            globals_.append((var, value, str(detail.get("type", ""))))
    if maps:
        lines.append("maps:")
        for name, entry in maps.items():
            lines += _entry(entry, why[("maps", name)], notes, "maps")
    if programs:
        lines.append("programs:")
        for name, entry in programs.items():
            lines += _entry(entry, why[("programs", name)], notes, "programs")
    if globals_:
        lines.append("# const volatile values a loader usually sets (compiled defaults shown):")
        lines.append("# globals:")
        for var, value, reason in globals_:
            lines.append(f"#   {var}: {scalar(value)}  # {_comment(reason)[:100]}".rstrip(" #"))
    if not (maps or programs or globals_):
        lines.append("# Nothing to declare: a plain libbpf open and load is all this object needs.")
    return "\n".join(lines) + "\n"


def _entry(
    entry: dict[str, Any],
    reasons: list[str],
    notes: dict[tuple[str, str, str], str],
    section: str,
) -> list[str]:
    name = entry["name"]
    out = [f"  # {_comment(r)[:160]}" for r in reasons]
    active = {k: v for k, v in entry.items() if not _has_placeholder(v)}
    commented = {k: v for k, v in entry.items() if _has_placeholder(v)}
    if commented and "attach_target" in commented and "autoload" not in active:
        active["autoload"] = False
        notes.setdefault((section, name, "autoload"), "until the real attach target is set")
    out.append(f"  - name: {scalar(name)}")
    for key, value in active.items():
        if key != "name":
            out.append(f"    {key}: {_value(value)}" + _note(notes, section, name, key))
    for key, value in commented.items():
        out.append(f"    # {key}: {_value(value)}  # {_FILL_IN.get(key, 'fill in')}")
    return out


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {scalar(v)}" for k, v in value.items()) + "}"
    return scalar(value)


def _note(notes: dict[tuple[str, str, str], str], section: str, name: str, key: str) -> str:
    text = notes.get((section, name, key))
    return f"  # {_comment(text)}" if text else ""


def _comment(text: Any) -> str:
    """Artifact text inside a YAML comment: one line, nothing that could end the comment."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))
