"""A private apt workspace: any Debian suite, from the mirror the host already trusts.

The mirror is never written into code: it comes from BPFCOMPAT_DEBIAN_MIRROR or from the
host's own apt sources, so the tool uses whatever mirror (or proxy) the machine is set up for.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from bpfcompat.errors import FetchError
from bpfcompat.vm.proc import run_bounded

MIRROR_ENV = "BPFCOMPAT_DEBIAN_MIRROR"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_SOURCES = Path("/etc/apt/sources.list")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")
APT_NET_TIMEOUT_S = 60
APT_STALL_S = 180.0


def _deb822_uris(text: str) -> list[tuple[str, list[str]]]:
    """(URI, suites) pairs of the `Types: deb` stanzas of a .sources file."""
    found: list[tuple[str, list[str]]] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        for uri in fields.get("uris", "").split():
            found.append((uri, fields.get("suites", "").split()))
    return found


def _one_line_uris(text: str) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)
        parts = line.split()
        if len(parts) >= 3:
            found.append((parts[1], [parts[2]]))
    return found


def _looks_like_debian_archive(uri: str, suites: list[str]) -> bool:
    """The main archive, not -security or a third-party repository."""
    if not uri.startswith(("http://", "https://", "file:/")):
        return False
    if any(s.endswith("-security") for s in suites):
        return False
    return uri.rstrip("/").endswith("/debian")


def discover_mirror(sources: Path = APT_SOURCES, sources_dir: Path = APT_SOURCES_DIR) -> str:
    """The Debian archive URI this host's apt uses (or the explicit setting)."""
    explicit = os.environ.get(MIRROR_ENV, "").strip()
    if explicit:
        return explicit.rstrip("/")
    candidates: list[tuple[str, list[str]]] = []
    files = [sources] if sources.is_file() else []
    if sources_dir.is_dir():
        files += sorted(p for p in sources_dir.iterdir() if p.suffix in {".list", ".sources"})
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        candidates += _deb822_uris(text) if path.suffix == ".sources" else _one_line_uris(text)
    for uri, suites in candidates:
        if _looks_like_debian_archive(uri, suites):
            return uri.rstrip("/")
    raise FetchError(
        "no Debian mirror found in the host's apt sources "
        f"({sources}, {sources_dir}); set {MIRROR_ENV} to the archive URI"
    )


@dataclass(frozen=True)
class AptWorkspace:
    """apt-get/apt-cache pointed at a private sources list and state directory."""

    root: Path
    mirror: str
    suites: tuple[str, ...]
    arch: str = "amd64"  # a dpkg architecture: which binary-ARCH lists and packages

    @classmethod
    def for_suite(cls, cache: Path, suite: str, arch: str, mirror: str) -> AptWorkspace:
        """One state directory per (suite, architecture); amd64 keeps the plain name."""
        name = suite if arch == "amd64" else f"{suite}-{arch}"
        return cls(cache / "apt" / name, mirror, (suite,), arch)

    @property
    def sources_list(self) -> Path:
        return self.root / "sources.list"

    def _options(self) -> list[str]:
        return [
            "-o",
            f"Dir::Etc::SourceList={self.sources_list}",
            "-o",
            "Dir::Etc::SourceParts=/dev/null",
            "-o",
            f"Dir::State::Lists={self.root / 'lists'}",
            "-o",
            f"Dir::Cache={self.root / 'cache'}",
            "-o",
            "Dir::State::status=/dev/null",
            "-o",
            f"APT::Architecture={self.arch}",
            "-o",
            f"APT::Architectures={self.arch}",
            "-o",
            "APT::Sandbox::User=root",
            "-o",
            "Acquire::Retries=3",
            "-o",
            f"Acquire::http::Timeout={APT_NET_TIMEOUT_S}",
            "-o",
            f"Acquire::https::Timeout={APT_NET_TIMEOUT_S}",
            "-o",
            "Debug::NoLocking=true",
        ]

    def prepare(self) -> None:
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        signed = f"[signed-by={KEYRING}] " if KEYRING.is_file() else ""
        lines = [f"deb {signed}{self.mirror} {suite} main" for suite in self.suites]
        text = "\n".join(lines) + "\n"
        if not self.sources_list.is_file() or self.sources_list.read_text() != text:
            self.sources_list.write_text(text)
            self.update()
        elif not any((self.root / "lists").glob("*_Packages*")):
            self.update()

    def _run(self, tool: str, args: list[str], cwd: Path | None = None) -> str:
        cmd = [tool, *self._options(), *args]
        what = f"{tool} {' '.join(args)} (mirror {self.mirror})"
        # apt prints a line per file it fetches: minutes of silence is a hang (seen on a
        # full disk), not a slow mirror.
        proc = run_bounded(cmd, what, error=FetchError, timeout=900, stall=APT_STALL_S, cwd=cwd)
        if proc.returncode != 0:
            raise FetchError(f"{what}: {_last_error_line(proc.err or proc.out)}")
        return proc.out

    def update(self) -> None:
        out = self._run("apt-get", ["update", "-q"])
        # apt-get update exits 0 even when a suite could not be fetched; check the lists.
        missing = [
            s for s in self.suites if not any((self.root / "lists").glob(f"*_dists_{s}_*Packages*"))
        ]
        if missing:
            raise FetchError(
                f"apt-get update: suite(s) {', '.join(missing)} not available from mirror "
                f"{self.mirror}: {_last_error_line(out)}"
            )

    def show(self, package: str) -> dict[str, str]:
        """The candidate version's control fields (the first stanza apt-cache prints)."""
        text = self._run("apt-cache", ["show", "--no-all-versions", package])
        fields: dict[str, str] = {}
        key = ""
        for line in text.splitlines():
            if not line.strip():
                if fields:
                    break
                continue
            if line[0].isspace() and key:
                fields[key] += "\n" + line.strip()
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if not fields:
            raise FetchError(f"package {package} not found in {', '.join(self.suites)}")
        return fields

    def download(self, package: str, version: str, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        self._run("apt-get", ["download", "-q", f"{package}={version}"], cwd=dest)
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if not debs:
            raise FetchError(f"apt-get download {package}: no .deb written")
        return debs[-1]


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith(("E:", "Err:", "W:")):
            return line
    return lines[-1] if lines else "no output"


def linux_dependencies(depends: str) -> list[str]:
    """`linux-*` package names in a Depends field (first alternative of each clause)."""
    names: list[str] = []
    for clause in depends.split(","):
        first = clause.split("|")[0].strip()
        name = first.split("(")[0].split(":")[0].strip()
        if name.startswith("linux-") and name not in names:
            names.append(name)
    return names
