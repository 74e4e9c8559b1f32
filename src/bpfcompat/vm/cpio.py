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
