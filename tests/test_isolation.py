"""Isolation and least privilege.

The guest runs untrusted objects and their manifests' commands as root, so it must not
reach the host; the host must never hand configuration text to a shell; the per-run SSH
key must not outlive the run on disk. Each claim is checked, not assumed: the network
one from inside a real guest.
"""

from __future__ import annotations

import ast
import json
import shlex
import shutil
import socket
import sqlite3
import threading
from pathlib import Path

import pytest

from bpfcompat.vm.qemu import BootSpec, QemuVM
from conftest import ROOT, require_tool, run_cli

SRC = ROOT / "src" / "bpfcompat"
PRIVATE_KEY_MARKERS = (b"PRIVATE KEY", b"openssh-key-v1")


# --- no host shell ------------------------------------------------------------------------


def _shell_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that hand a string to a shell: shell=True anywhere, os.system, os.popen,
    subprocess.getoutput/getstatusoutput, asyncio's create_subprocess_shell."""
    banned_attrs = {
        ("os", "system"),
        ("os", "popen"),
        ("subprocess", "getoutput"),
        ("subprocess", "getstatusoutput"),
        ("asyncio", "create_subprocess_shell"),
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "shell" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    found.append((node.lineno, f"shell={ast.unparse(kw.value)}"))
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and (func.value.id, func.attr) in banned_attrs
            ):
                found.append((node.lineno, f"{func.value.id}.{func.attr}()"))
        elif isinstance(node, ast.ImportFrom) and node.module in {"os", "subprocess", "asyncio"}:
            for alias in node.names:
                if (node.module, alias.name) in banned_attrs:
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
    return found


def test_no_source_file_hands_a_string_to_a_shell() -> None:
    """Manifest commands, artifact names and kernel command lines are user text: the host
    runs programs only as argv lists. (The guest runs functional tests as argv too.)"""
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in files
        for line, what in _shell_uses(ast.parse(path.read_text(), str(path)))
    ]
    assert not offenders, "\n".join(offenders)


def test_the_shell_scan_finds_what_it_looks_for() -> None:
    """The scan itself must not be vacuous."""
    code = (
        "import os, subprocess\nfrom os import system\n"
        "subprocess.run('id', shell=True)\nos.system('id')\nos.popen('id')\n"
        "subprocess.Popen(['id'], shell=flag)\nsubprocess.run(['id'], shell=False)\n"
    )
    found = [what for _, what in _shell_uses(ast.parse(code))]
    assert found == [
        "from os import system",
        "shell=True",
        "os.system()",
        "os.popen()",
        "shell=flag",
    ]


# --- QEMU's network exposure --------------------------------------------------------------


def _command(accel: str) -> list[str]:
    spec = BootSpec(
        vmlinuz=Path("/nonexistent/vmlinuz"),
        initrd=Path("/nonexistent/initrd"),
        cmdline="console=ttyS0",
        memory_mb=512,
        cpus=1,
        console_log=Path("/nonexistent/console.log"),
        accel=accel,
    )
    vm = QemuVM(spec)
    vm.ssh_port = 40022
    return vm.command()


@pytest.mark.parametrize("accel", ["tcg", "kvm"])
def test_qemu_listens_on_loopback_only(accel: str) -> None:
    cmd = _command(accel)
    netdevs = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-netdev"]
    assert len(netdevs) == 1
    options = netdevs[0].split(",")
    assert options[0] == "user" and "restrict=on" in options, netdevs
    forwards = [o.removeprefix("hostfwd=") for o in options if o.startswith("hostfwd=")]
    assert forwards == ["tcp:127.0.0.1:40022-:22"], forwards
    assert not [o for o in options if o.startswith(("guestfwd=", "smb=", "tftp="))]
    # Nothing else in the command line opens a host socket or device the guest could use.
    joined = " ".join(cmd)
    for needle in ("tcp:", "udp:", "unix:", "telnet", "-vnc", "-gdb", "-spice", "virtfs"):
        assert needle not in joined.replace("hostfwd=tcp:127.0.0.1", ""), needle
    assert cmd[cmd.index("-monitor") + 1] == "none"
    assert cmd[cmd.index("-display") + 1] == "none"
    assert "-nodefaults" in cmd


# --- from inside a real guest -------------------------------------------------------------


def _private_cache(tmp_path: Path) -> str:
    """A cache of our own that shares the kernels and images (links, not copies): its
    snapshots start empty, so the run's first guest boots and saves one."""
    from bpfcompat.vm.cache import cache_root

    xdg = tmp_path / "xdg"
    (xdg / "bpfcompat").mkdir(parents=True)
    for part in ("kernels", "images"):
        (xdg / "bpfcompat" / part).symlink_to(cache_root() / part)
    return str(xdg)


PROBE = """\
import socket, subprocess
subprocess.run(['ip', 'route', 'add', 'default', 'via', '10.0.2.2'], capture_output=True)
targets = [('10.0.2.2', PORT), ('10.0.2.2', 22), ('10.0.2.2', 80), ('10.0.2.3', 53),
           ('127.0.0.1', PORT), ('1.1.1.1', 443)]
lines = []
for host, port in targets:
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        lines.append(f'{host}:{port} CONNECTED')
    except OSError as exc:
        lines.append(f'{host}:{port} blocked ({type(exc).__name__})')
    finally:
        s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
try:
    u.sendto(bytes.fromhex('abcd01000001000000000000076578616d706c6503636f6d0000010001'),
             ('10.0.2.3', 53))
    u.recvfrom(512)
    lines.append('10.0.2.3:53/udp ANSWERED')
except OSError as exc:
    lines.append(f'10.0.2.3:53/udp blocked ({type(exc).__name__})')
print(' | '.join(lines))
bad = [ln for ln in lines if 'CONNECTED' in ln or 'ANSWERED' in ln]
print('isolation-broken' if bad else 'isolation-ok')
"""


class Listener:
    """A TCP listener on the host's loopback that records every connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[tuple[str, int]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(peer)
            conn.close()

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.mark.vm
@pytest.mark.parametrize("snapshots", [False, True], ids=["booted", "snapshot"])
def test_guest_cannot_reach_the_host_and_the_key_stays_in_memory(
    built_examples: Path, tmp_path: Path, snapshots: bool
) -> None:
    """A manifest's functional test (root in the guest) tries the host's address (10.0.2.2,
    also with a default route added), the slirp DNS and the internet: all blocked, and a
    listener on the host's 127.0.0.1 sees nothing. The same run then shows that no private
    key was written anywhere in the run's directories while the public half reached the
    guest: on the kernel command line when it boots, in the console handoff when it comes
    from a snapshot (a private snapshot cache, saved by this run's first guest)."""
    require_tool("qemu-system-x86_64")
    listener = Listener()
    try:
        art = tmp_path / "in" / "net-probe"
        art.mkdir(parents=True)
        shutil.copy(built_examples / "simple-pass" / "simple-pass.bpf.o", art / "net-probe.bpf.o")
        script = PROBE.replace("PORT", str(listener.port))
        manifest = {
            "functional_tests": [
                {
                    "name": "reach-the-host",
                    "command": f"python3 -c {shlex.quote(script)}",
                    "timeout": "60s",
                    "expect_stdout_contains": "isolation-ok",
                }
            ]
        }
        (art / "manifest.yaml").write_text(json.dumps(manifest))
        out, db = tmp_path / "out", tmp_path / "db"
        mode = [] if snapshots else ["--no-snapshot"]
        env = {"XDG_CACHE_HOME": _private_cache(tmp_path)} if snapshots else None
        proc = run_cli("matrix", "run", str(art), "--kernel", "debian-12-6.1", "--db", str(db),
                       "--out-dir", str(out), "--json", str(tmp_path / "run.json"), "--no-cache",
                       *mode, env=env, timeout=600)  # fmt: skip
    finally:
        listener.close()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    conn = sqlite3.connect(db)
    status, code, raw = conn.execute(
        "select c.status, c.code, v.raw_json from cell c join validatorresult v "
        "on v.id = c.result_id"
    ).fetchone()
    result = json.loads(raw)
    test = result["functional"]["tests"][0]
    stdout = test["stdout_tail"]
    assert "isolation-ok" in stdout, (status, code, test)
    assert stdout.count("blocked") == 7, stdout
    assert (status, code) == ("pass", None), (status, code, stdout)
    assert listener.accepted == [], listener.accepted

    # The public key went to the guest on the kernel command line or in the handoff ...
    assert ("bpfcompat.key=" in (result["host"]["cmdline"] or "")) is not snapshots
    ready_via = conn.execute("select ready_via from runkernel").fetchone()[0]
    assert ready_via == ("boot+snapshot" if snapshots else "boot")
    # ... and no private key exists in anything the run wrote: reports, logs, store.
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("console-") for p in written)
    leaks = [str(p) for p in written if any(m in p.read_bytes() for m in PRIVATE_KEY_MARKERS)]
    assert not leaks, leaks
