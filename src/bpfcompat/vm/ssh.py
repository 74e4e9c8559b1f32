"""The guest transport: run, put, get, close. The orchestrator never imports paramiko.

paramiko exceptions are translated here, once, into TransportError; the host key is
pinned to the one made when the guest image was built.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bpfcompat.errors import OversizeError, TransportError

if TYPE_CHECKING:
    from bpfcompat.vm.qemu import GuestVM


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False


SFTP_TIMEOUT_S = 60.0
# A protocol line longer than this is a misbehaving guest, not a message.
MAX_LINE_BYTES = 64 << 10


class GuestTransport(Protocol):
    def run(self, command: str, timeout: float, stdin: bytes | None = None) -> CommandResult: ...
    def stream(self, command: str, idle_timeout: float) -> Iterator[str]: ...
    def put_files(self, files: dict[str, bytes], root: str) -> None: ...
    def get_bytes(self, remote: str, max_bytes: int) -> bytes: ...
    def close(self) -> None: ...


class RunKey:
    """A per-run ed25519 client key, kept in memory; its public half goes on the kernel
    command line, so no key file ever exists."""

    def __init__(self) -> None:
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        self.key = paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode()))

    @property
    def public_b64(self) -> str:
        return self.key.get_base64()


class _PinnedHostKey(paramiko.MissingHostKeyPolicy):
    def __init__(self, expected: str) -> None:
        self.expected = expected.split()[1] if " " in expected else expected

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if key.get_base64() != self.expected:
            raise TransportError(f"guest host key mismatch for {hostname}: not the image's key")


class ParamikoTransport:
    """SSH to a guest on a loopback forward."""

    def __init__(self, client: paramiko.SSHClient, where: str) -> None:
        self._client = client
        self._sftp: paramiko.SFTPClient | None = None
        self.where = where

    @classmethod
    def connect(
        cls,
        port: int,
        key: RunKey,
        host_key: str,
        deadline: float,
        where: str,
        alive: object = None,
    ) -> ParamikoTransport:
        """Retry until the guest answers or the deadline passes."""
        last: Exception | None = None
        while time.monotonic() < deadline:
            if callable(alive):
                alive()
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(_PinnedHostKey(host_key))
            try:
                client.connect(
                    "127.0.0.1",
                    port=port,
                    username="root",
                    pkey=key.key,
                    allow_agent=False,
                    look_for_keys=False,
                    timeout=10,
                    banner_timeout=30,
                    auth_timeout=30,
                )
                transport = client.get_transport()
                if transport is not None:
                    transport.set_keepalive(5)
                return cls(client, where)
            except TransportError:
                client.close()
                raise
            except (paramiko.SSHException, OSError, EOFError) as exc:
                last = exc
                client.close()
                time.sleep(0.3)
        raise TransportError(f"{where}: SSH did not answer before the deadline ({last})")

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
                # Without a channel timeout an SFTP read from a stalled guest waits forever.
                self._sftp.get_channel().settimeout(SFTP_TIMEOUT_S)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise TransportError(f"{self.where}: SFTP failed: {exc}") from None
        return self._sftp

    def run(self, command: str, timeout: float, stdin: bytes | None = None) -> CommandResult:
        try:
            transport = self._client.get_transport()
            if transport is None or not transport.is_active():
                raise TransportError(f"{self.where}: SSH connection is closed")
            chan = transport.open_session(timeout=10)
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin)
                chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                elif chan.exit_status_ready():
                    while chan.recv_ready():
                        out += chan.recv(65536)
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(65536)
                    break
                elif time.monotonic() > deadline:
                    chan.close()
                    return CommandResult(
                        -1, out.decode(errors="replace"), err.decode(errors="replace"), True
                    )
                elif not transport.is_active():
                    raise TransportError(f"{self.where}: SSH connection dropped")
                else:
                    time.sleep(0.01)
            code = chan.recv_exit_status()
            chan.close()
            return CommandResult(code, out.decode(errors="replace"), err.decode(errors="replace"))
        except TransportError:
            raise
        except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"{self.where}: command failed over SSH: {exc}") from None

    def stream(self, command: str, idle_timeout: float) -> Iterator[str]:
        """Yield the command's stdout lines as they arrive (stderr is discarded).

        Raises TransportError when the connection drops or no line arrives for
        `idle_timeout` seconds (a hung guest), so callers learn of it mid-command.
        """
        try:
            transport = self._client.get_transport()
            if transport is None or not transport.is_active():
                raise TransportError(f"{self.where}: SSH connection is closed")
            chan = transport.open_session(timeout=10)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"{self.where}: command failed over SSH: {exc}") from None
        buffer = b""
        last = time.monotonic()
        try:
            while True:
                if chan.recv_ready():
                    data = chan.recv(65536)
                    if data:
                        last = time.monotonic()
                        *lines, tail = data.split(b"\n")
                        if lines:
                            lines[0], buffer = buffer + lines[0], tail
                        else:
                            buffer += tail
                        for line in lines:
                            yield line[:MAX_LINE_BYTES].decode("utf-8", "replace")
                        if len(buffer) > MAX_LINE_BYTES:
                            raise OversizeError(
                                f"{self.where}: the guest wrote a line over {MAX_LINE_BYTES} "
                                "bytes on the protocol channel",
                                len(buffer),
                            )
                    continue
                if chan.recv_stderr_ready():
                    chan.recv_stderr(65536)
                    continue
                if chan.exit_status_ready() and not chan.recv_ready():
                    if chan.recv_exit_status() == -1 and not transport.is_active():
                        # Closed without an exit status: the connection, not the command, ended.
                        raise TransportError(f"{self.where}: SSH connection dropped")
                    if buffer:
                        yield buffer.decode("utf-8", "replace")
                    return
                if not transport.is_active():
                    raise TransportError(f"{self.where}: SSH connection dropped")
                if time.monotonic() - last > idle_timeout:
                    raise TransportError(f"{self.where}: no progress for {idle_timeout:.0f} s")
                time.sleep(0.005)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"{self.where}: SSH stream failed: {exc}") from None
        finally:
            chan.close()

    def put_files(self, files: dict[str, bytes], root: str) -> None:
        """Write many small files below `root` in one round trip: a tar stream into the
        guest's `tar` (per-file SFTP costs four round trips each, every one of them a
        wake-up of the emulated guest). Names are relative to `root` and never user input.

        The stream is gzipped (level 1): the emulated guest spends its time in the SSH
        cipher, per byte, and objects with DWARF shrink 3-4x (a 69 MB corpus: 33 s to
        upload as it is, 5 s gzipped)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        raw = buffer.getvalue()
        data = gzip.compress(raw, compresslevel=1, mtime=0)
        timeout = 60 + len(raw) / 1e6  # a floor of 1 MB/s through the emulated NIC
        result = self.run(f"mkdir -p {root} && tar -x -z -f - -C {root}", timeout, data)
        if result.timed_out or result.exit_code != 0:
            why = "timed out" if result.timed_out else f"exit {result.exit_code}"
            detail = result.stderr.strip().splitlines()[-1:] or [""]
            raise TransportError(f"{self.where}: tar upload to {root} failed ({why}) {detail[0]}")

    def get_bytes(self, remote: str, max_bytes: int) -> bytes:
        """The file's bytes, its size checked before any is read (OversizeError)."""
        try:
            with self._sftp_client().open(remote, "rb") as fh:
                size = fh.stat().st_size or 0
                if size > max_bytes:
                    raise OversizeError(f"{self.where}: {remote} is {size} bytes", size)
                data = fh.read(max_bytes + 1)
            if len(data) > max_bytes:  # grew while we read it
                raise OversizeError(f"{self.where}: {remote} is over {max_bytes} bytes", len(data))
            return data
        except (FileNotFoundError, OversizeError):
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"{self.where}: SFTP get {remote}: {exc}") from None

    def close(self) -> None:
        try:
            if self._sftp is not None:
                self._sftp.close()
        finally:
            self._client.close()


def ssh_connect(
    vm: GuestVM, key: RunKey, host_key: str, deadline: float, where: str
) -> GuestTransport:
    """The real connector: SSH to the guest's loopback forward, host key pinned."""
    return ParamikoTransport.connect(vm.ssh_port, key, host_key, deadline, where, alive=vm.check)
