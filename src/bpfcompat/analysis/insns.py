"""What each function's instructions use: helpers, kfuncs, maps, globals, ISA features.

The object file is read before libbpf has touched it, so several things are told apart by
relocations rather than by the instruction alone: a call to an extern symbol is a kfunc
call (libbpf turns it into BPF_PSEUDO_KFUNC_CALL), an ld_imm64 relocated against code is a
callback (BPF_PSEUDO_FUNC), one relocated against .maps or .rodata is a map or global-data
reference. A program's needs are those of every function it can reach through calls and
callbacks.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

from bpfcompat.analysis.objfile import Function, ObjectFile
from bpfcompat.validator import elf as E

# Instruction classes and fields (include/uapi/linux/bpf_common.h, bpf.h).
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)
MODE_MEMSX = 0x80
MODE_ATOMIC = 0xC0
OP_DIV, OP_MOD, OP_MOV, OP_END = 0x30, 0x90, 0xB0, 0xD0
OP_JA, OP_CALL, OP_EXIT = 0x00, 0x80, 0x90
LD_IMM64 = 0x18
ATOMIC_ADD = 0x00
LOAD_ACQ, STORE_REL = 0x100, 0x110
PSEUDO_CALL, PSEUDO_KFUNC_CALL = 1, 2
TAIL_CALL_HELPER = 12
MAX_CALL_DEPTH = 64  # libbpf and the kernel allow 8 frames; anything beyond is no real code


@dataclass
class Uses:
    """Everything one function (or, merged, one program) uses."""

    helpers: dict[int, None] = field(default_factory=dict)
    kfuncs: dict[str, None] = field(default_factory=dict)
    maps: dict[str, None] = field(default_factory=dict)
    data_sections: dict[str, None] = field(default_factory=dict)
    externs: dict[str, None] = field(default_factory=dict)  # .kconfig/.ksyms variables
    features: dict[str, None] = field(default_factory=dict)
    calls: dict[tuple[int, int], None] = field(default_factory=dict)  # (section, offset)
    insns: int = 0

    def merge(self, other: Uses) -> None:
        for name in ("helpers", "kfuncs", "maps", "data_sections", "externs", "features"):
            getattr(self, name).update(getattr(other, name))
        self.insns += other.insns


def analyse(obj: ObjectFile) -> dict[str, Uses]:
    """Per program name: what it and everything it calls use."""
    per_func: dict[tuple[int, int], Uses] = {}
    for func in obj.functions:
        per_func[(func.sec_index, func.offset)] = function_uses(obj, func)
    out: dict[str, Uses] = {}
    for prog in obj.programs:
        total = Uses()
        seen: set[tuple[int, int]] = set()
        todo = [(prog.sec_index, prog.offset)]
        while todo:
            key = todo.pop()
            if key in seen or key not in per_func:
                continue
            seen.add(key)
            total.merge(per_func[key])
            todo.extend(per_func[key].calls)
        if len(seen) > 1:
            total.features["bpf_to_bpf_calls"] = None
            if TAIL_CALL_HELPER in total.helpers:
                total.features["tail_calls_in_subprogs"] = None
        out[prog.name] = total
    return out


def function_uses(obj: ObjectFile, func: Function) -> Uses:
    uses = Uses()
    code = obj.section_data(func.sec_index)[func.offset : func.offset + func.size]
    count = len(code) // 8
    uses.insns = count
    little = obj.data[5] == 1
    section_relocs = obj.relocs.get(func.sec_index, [])  # sorted by offset
    lo = bisect.bisect_left(section_relocs, (func.offset,))
    hi = bisect.bisect_left(section_relocs, (func.offset + func.size,))
    relocs = {off - func.offset: (sym, rtype) for off, sym, rtype in section_relocs[lo:hi]}
    recs = list(struct.iter_unpack(("<" if little else ">") + "BBhi", code[: count * 8]))
    jumps: list[tuple[int, int, bool]] = []  # (insn, target, falls through)
    exits: list[int] = []
    feats = uses.features
    i = 0
    while i < count:
        op, regs, off, imm = recs[i]
        cls = op & 0x07
        if op == LD_IMM64:
            rel = relocs.get(i * 8)
            if rel is not None:
                _ld_imm64_target(obj, rel[0], imm, uses)
            i += 2
            continue
        if cls in (JMP, JMP32):
            jop = op & 0xF0
            if cls == JMP32:
                feats["jmp32"] = None
            if jop == OP_CALL and cls == JMP:
                src = regs >> 4 if little else regs & 0x0F
                _call(obj, func, i, src, imm, relocs.get(i * 8), uses)
            elif jop == OP_EXIT and cls == JMP:
                exits.append(i)
            elif cls == JMP32 and jop == OP_JA:
                feats["isa_v4"] = None  # gotol: the 32-bit jump offset is in imm
                jumps.append((i, i + imm + 1, False))
            else:
                jumps.append((i, i + off + 1, jop != OP_JA))
        elif cls in (ALU, ALU64):
            if off or op == (ALU64 | OP_END):  # plain ALU ops (the bulk of code) have off 0
                aop = op & 0xF0
                if (
                    (aop in (OP_DIV, OP_MOD) and off == 1)
                    or (aop == OP_MOV and off in (8, 16, 32))
                    or (aop == OP_END and cls == ALU64)
                ):
                    feats["isa_v4"] = None
        elif cls == STX and op & 0xE0 == MODE_ATOMIC:
            if imm in (LOAD_ACQ, STORE_REL):
                feats["load_acquire_store_release"] = None
            elif imm != ATOMIC_ADD:  # plain add (the old XADD) predates the atomics series
                feats["atomics"] = None
        elif cls == LDX and op & 0xE0 == MODE_MEMSX:
            feats["isa_v4"] = None
        i += 1
    if any(target <= at for at, target, _ft in jumps) and _has_cycle(count, jumps, exits):
        feats["bounded_loops"] = None
    return uses


def _call(
    obj: ObjectFile,
    func: Function,
    i: int,
    src: int,
    imm: int,
    rel: tuple[int, int] | None,
    uses: Uses,
) -> None:
    if src == 0:
        uses.helpers[imm] = None
        if imm == TAIL_CALL_HELPER:
            uses.features["tail_calls"] = None
        return
    if src == PSEUDO_KFUNC_CALL:
        uses.kfuncs[f"btf_id#{imm}"] = None
        return
    if src != PSEUDO_CALL:
        return
    if rel is None:  # a call within the section: imm counts instructions from the next one
        uses.calls[(func.sec_index, func.offset + (i + imm + 1) * 8)] = None
        return
    name, value, _size, _bind, stype, shndx = obj.symbols[rel[0]]
    if shndx == E.SHN_UNDEF:
        uses.kfuncs[name] = None  # kfunc_calls is a requirement only if one is not __weak
    elif stype == E.STT_SECTION:
        uses.calls[(shndx, value + (imm + 1) * 8)] = None
    else:
        uses.calls[(shndx, value)] = None


def _ld_imm64_target(obj: ObjectFile, sym: int, imm: int, uses: Uses) -> None:
    name, value, _size, _bind, stype, shndx = obj.symbols[sym]
    if shndx == E.SHN_UNDEF:
        uses.externs[name] = None
        return
    if not 0 < shndx < len(obj.headers):
        return
    h = obj.headers[shndx]
    if h[2] & E.SHF_EXECINSTR:
        # Address of a function: a callback, turned into BPF_PSEUDO_FUNC by libbpf.
        uses.features["callbacks"] = None
        target = value + imm if stype == E.STT_SECTION else value
        callee = obj.function_at(shndx, target)
        if callee is not None:
            uses.calls[(callee.sec_index, callee.offset)] = None
    elif h[0] in (".maps", "maps"):
        uses.maps[name] = None
    else:
        uses.data_sections[h[0]] = None
        uses.features["global_data"] = None


def _has_cycle(count: int, jumps: list[tuple[int, int, bool]], exits: list[int]) -> bool:
    """Whether the control-flow graph has a cycle: the loop the verifier before 5.3 refused
    ("back-edge from insn X to Y"). Built over basic blocks (a block ends at each jump and
    exit), so the work grows with the jumps, not the instructions."""
    leaders = {0}
    for at, target, _ft in jumps:
        if 0 <= target < count:
            leaders.add(target)
        leaders.add(at + 1)
    leaders.update(e + 1 for e in exits)
    starts = sorted(x for x in leaders if x < count)
    index = {start: k for k, start in enumerate(starts)}
    ends_with = {at: (target, ft) for at, target, ft in jumps}
    exit_set = set(exits)
    succ: list[list[int]] = []
    for k in range(len(starts)):
        last = (starts[k + 1] if k + 1 < len(starts) else count) - 1
        nxt: list[int] = []
        if last in ends_with:
            target, falls = ends_with[last]
            if target in index:
                nxt.append(index[target])
            if falls and k + 1 < len(starts):
                nxt.append(k + 1)
        elif last not in exit_set and k + 1 < len(starts):
            nxt.append(k + 1)
        succ.append(nxt)
    state = bytearray(len(starts))  # 0 new, 1 on the DFS stack, 2 done
    stack = [(0, 0)]
    state[0] = 1
    while stack:
        node, pos = stack[-1]
        if pos < len(succ[node]):
            stack[-1] = (node, pos + 1)
            child = succ[node][pos]
            if state[child] == 1:
                return True
            if state[child] == 0:
                state[child] = 1
                stack.append((child, 0))
        else:
            state[node] = 2
            stack.pop()
    return False
