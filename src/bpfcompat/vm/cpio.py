"""A minimal newc cpio writer, enough for Linux initramfs archives.

Written by hand because the kernel needs device nodes (/dev/console) in the archive and
we build as whatever user runs the tool, without mknod; deterministic output also keeps
image hashes stable.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

_TRAILER = "TRAILER!!!"


class CpioWriter:
    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._ino = 1
        self._seen: set[str] = set()

    def _header(self, name: str, mode: int, size: int, rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = [
            self._ino,
            mode,
            0,
            0,
            1,
            0,
            size,
            0,
            0,
            rdev[0],
            rdev[1],
            len(encoded),
            0,
        ]
        self._ino += 1
        self._fh.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self._pad()

    def _pad(self) -> None:
        pos = self._fh.tell()
        self._fh.write(b"\0" * (-pos % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        if name in self._seen:
            return
        parent = os.path.dirname(name)
        if parent:
            self.directory(parent)
        self._seen.add(name)
        self._header(name, stat.S_IFDIR | mode, 0)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        self._parent(name)
        self._header(name, stat.S_IFREG | mode, len(data))
        self._fh.write(data)
        self._pad()

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        self._parent(name)
        data = target.encode()
        self._header(name, stat.S_IFLNK | 0o777, len(data))
        self._fh.write(data)
        self._pad()

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = name.strip("/")
        self._parent(name)
        self._header(name, stat.S_IFCHR | mode, 0, (major, minor))

    def _parent(self, name: str) -> None:
        parent = os.path.dirname(name)
        if parent:
            self.directory(parent)

    def tree(self, root: Path, prefix: str = "") -> None:
        """Add every entry below `root` (sorted, so the archive is reproducible)."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            base = prefix if rel_dir == "." else os.path.join(prefix, rel_dir)
            if base:
                st = os.lstat(dirpath)
                self.directory(base, stat.S_IMODE(st.st_mode))
            for name in sorted(dirnames + filenames):
                path = os.path.join(dirpath, name)
                arc = os.path.join(base, name) if base else name
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    self.symlink(arc, os.readlink(path))
                elif stat.S_ISREG(st.st_mode):
                    self.file(arc, Path(path).read_bytes(), stat.S_IMODE(st.st_mode))

    def close(self) -> None:
        self._header(_TRAILER, 0, 0)
        pos = self._fh.tell()
        self._fh.write(b"\0" * (-pos % 512))


class CpioFormatError(ValueError):
    pass


def extract_newc(fh: BinaryIO, dest: Path, *, max_bytes: int = 8 << 30) -> int:
    """Unpack a newc archive (an RPM payload) into `dest`; returns the files written.

    The archive is untrusted: names are made relative, `..` is refused, and symlinks
    are created only when they stay inside `dest` (an absolute or climbing link could
    make a later read pick up a host file). Device nodes and other special files are
    skipped: nothing of a kernel package needs them."""
    written = total = 0
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    while True:
        header = fh.read(110)
        if len(header) < 110 or header[:5] != b"07070" or header[5:6] not in (b"1", b"2"):
            raise CpioFormatError("not a newc cpio archive (or truncated)")
        try:
            fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise CpioFormatError("corrupt cpio header") from None
        mode, size, namesize = fields[1], fields[6], fields[11]
        raw_name = fh.read(namesize)
        fh.read(-(110 + namesize) % 4)
        name = raw_name.rstrip(b"\0").decode("utf-8", "surrogateescape")
        if name == _TRAILER:
            return written
        total += size
        if total > max_bytes:
            raise CpioFormatError(f"archive unpacks to over {max_bytes >> 20} MiB")
        data = fh.read(size)
        if len(data) != size:
            raise CpioFormatError(f"truncated archive at {name!r}")
        fh.read(-size % 4)
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not parts:
            continue
        if ".." in parts:
            raise CpioFormatError(f"archive member {name!r} climbs out of the tree")
        target = dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(root):
            raise CpioFormatError(f"archive member {name!r} lands outside the tree")
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFDIR:
            target.mkdir(exist_ok=True)
        elif kind == stat.S_IFREG:
            target.unlink(missing_ok=True)  # never write through an earlier member's link
            target.write_bytes(data)
            target.chmod(stat.S_IMODE(mode) & 0o755)
            written += 1
        elif kind == stat.S_IFLNK:
            link = data.decode("utf-8", "surrogateescape")
            real = Path(os.path.realpath(target.parent / link))
            fresh = not target.exists() and not target.is_symlink()
            if fresh and not link.startswith("/") and real.is_relative_to(root):
                target.symlink_to(link)
