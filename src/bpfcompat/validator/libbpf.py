"""libbpf through ctypes: the guest's own libbpf is the loader under test."""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from .elf import BPF_CALL_CODE, BPF_INSN_SIZE
from .tables import BPF_MAP_TYPE_RINGBUF, BPF_PROG_TYPE_SYSCALL, error_text
from .util import decode, read_text

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any

_PTR_SPAN = 1 << (ctypes.sizeof(ctypes.c_void_p) * 8)

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


# The verifier's words for "this program type may not call this helper" since 6.10; libbpf
# before 1.5 does not know them and reports such helpers as supported (libbpf_probes.c).
HELPER_REFUSED_TEXT = b"program of this type cannot use helper "

# bpf_prog_load_opts for bpf_prog_load(): unchanged from libbpf 0.6 up to log_buf.
_PROG_LOAD_OPTS_SIZE = 104

# What probe_prog_load() in libbpf sets so that these program types load at all.
_PROBE_ATTACH_TYPES = {18: 10, 20: 16, 25: 21, 30: 36, 32: 45}  # type -> expected attach

BPF_F_SLEEPABLE = 1 << 4
BPF_LOG_STATS = 4  # the verifier's summary lines only (include/linux/bpf_verifier.h)
BPF_PROG_TYPE_SOCKET_FILTER = 1


class _OpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts up to btf_custom_path (libbpf.h); libbpf accepts a
    caller's shorter struct and zero-fills the fields after it."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_removed_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
    )


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
    def open_file(self, path: str, btf_custom_path: str | None = None) -> tuple[int | None, int]:
        """bpf_object__open_file; with a BTF path, libbpf relocates CO-RE against that
        file instead of the kernel's BTF (btf_custom_path, libbpf 0.5+; an older libbpf
        refuses the longer options struct with EINVAL, which is reported as such)."""
        func = self.sym("bpf_object__open_file", _c.c_void_p, _c.c_char_p, _c.c_void_p)
        if not func:
            return None, -errno.ENOSYS
        if btf_custom_path is None:
            return _ptr_result(func(os.fsencode(path), None))
        opts = _OpenOpts(sz=_c.sizeof(_OpenOpts), btf_custom_path=os.fsencode(btf_custom_path))
        return _ptr_result(func(os.fsencode(path), _c.byref(opts)))

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
        """Give ``prog`` a verifier log buffer (a ctypes buffer or a raw address)."""
        func = self.sym("bpf_program__set_log_buf", _c.c_int, _c.c_void_p, _c.c_void_p, _c.c_size_t)
        address = buf if isinstance(buf, int) else _c.addressof(buf)
        return bool(func) and func(prog, address, size) == 0

    def set_log_level(self, prog: int, level: int) -> bool:
        func = self.sym("bpf_program__set_log_level", _c.c_int, _c.c_void_p, _c.c_uint32)
        return bool(func) and func(prog, level) == 0

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

    def map_value_size(self, bpf_map: int) -> int | None:
        func = self.sym("bpf_map__value_size", _c.c_uint32, _c.c_void_p)
        return int(func(bpf_map)) if func else None

    def map_key_size(self, bpf_map: int) -> int | None:
        func = self.sym("bpf_map__key_size", _c.c_uint32, _c.c_void_p)
        return int(func(bpf_map)) if func else None

    def set_value_size(self, bpf_map: int, size: int) -> int:
        func = self.sym("bpf_map__set_value_size", _c.c_int, _c.c_void_p, _c.c_uint32)
        return _int_result(func(bpf_map, size)) if func else -errno.ENOSYS

    def set_key_size(self, bpf_map: int, size: int) -> int:
        func = self.sym("bpf_map__set_key_size", _c.c_int, _c.c_void_p, _c.c_uint32)
        return _int_result(func(bpf_map, size)) if func else -errno.ENOSYS

    def set_attach_target(self, prog: int, function: str | None, target_fd: int = 0) -> int:
        """The kernel function (target_fd 0) or the function of the loaded BPF program
        `target_fd` (freplace) that `prog` attaches to."""
        func = self.sym(
            "bpf_program__set_attach_target", _c.c_int, _c.c_void_p, _c.c_int, _c.c_char_p
        )
        name = function.encode() if function else None
        return _int_result(func(prog, target_fd, name)) if func else -errno.ENOSYS

    def find_program(self, obj: int, name: str) -> int | None:
        func = self.sym("bpf_object__find_program_by_name", _c.c_void_p, _c.c_void_p, _c.c_char_p)
        return (func(obj, name.encode()) or None) if func else None

    def prog_fd(self, prog: int) -> int:
        func = self.sym("bpf_program__fd", _c.c_int, _c.c_void_p)
        return int(func(prog)) if func else -errno.ENOSYS

    def set_prog_type(self, prog: int, type_id: int) -> int:
        func = self.sym("bpf_program__set_type", _c.c_int, _c.c_void_p, _c.c_int)
        return _int_result(func(prog, type_id)) if func else -errno.ENOSYS

    def set_expected_attach_type(self, prog: int, attach_id: int) -> int:
        func = self.sym("bpf_program__set_expected_attach_type", _c.c_int, _c.c_void_p, _c.c_int)
        return _int_result(func(prog, attach_id)) if func else -errno.ENOSYS

    def find_map(self, obj: int, name: str) -> int | None:
        """A map by name; an internal map (.rodata, .data.x) by its section's name."""
        func = self.sym("bpf_object__find_map_by_name", _c.c_void_p, _c.c_void_p, _c.c_char_p)
        return (func(obj, name.encode()) or None) if func else None

    def initial_value(self, bpf_map: int) -> tuple[int | None, int]:
        """(address, size) of libbpf's copy of an internal map's contents, before load."""
        func = self.sym("bpf_map__initial_value", _c.c_void_p, _c.c_void_p, _c.POINTER(_c.c_size_t))
        if not func:
            return None, 0
        size = _c.c_size_t(0)
        return func(bpf_map, _c.byref(size)) or None, int(size.value)

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

    def probe_log_stats(self) -> bool:
        """Whether the kernel prints the verifier's statistics alone (BPF_LOG_STATS, 5.2).

        Loads ``r0 = 0; exit`` as a socket filter at log level 4 and looks for the
        "processed N insns" line: the whole-object load asks for that level only if this
        kernel and libbpf (0.7, per-program log level and buffer) both take it.
        """
        load = self.sym(
            "bpf_prog_load", _c.c_int, _c.c_int, _c.c_char_p, _c.c_char_p, _c.c_void_p,
            _c.c_size_t, _c.c_void_p,
        )  # fmt: skip
        if not load or not self.has("bpf_program__set_log_level") or _c.sizeof(_c.c_void_p) != 8:
            return False  # (0.x's bpf_prog_load is another function; LP64 options layout)
        insns = bytes([0xB7]) + bytes(7) + bytes([0x95]) + bytes(7)
        log = ctypes.create_string_buffer(1024)
        opts = ctypes.create_string_buffer(_PROG_LOAD_OPTS_SIZE)
        struct.pack_into("=Q", opts, 0, _PROG_LOAD_OPTS_SIZE)
        struct.pack_into("=IIQ", opts, 88, BPF_LOG_STATS, len(log), ctypes.addressof(log))
        fd = load(BPF_PROG_TYPE_SOCKET_FILTER, None, b"GPL", insns, 2, opts)
        if fd < 0:
            return False
        os.close(fd)
        return b"processed " in log.value

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
