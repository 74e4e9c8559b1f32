"""The SSH transport against a real SSH server (paramiko's, in this process, on loopback):
key pinning, the tar upload, size-checked reads, bounded streamed lines, idle timeouts
and dropped connections, without booting a guest."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from bpfcompat.errors import OversizeError, TransportError
from bpfcompat.vm.ssh import MAX_LINE_BYTES, ParamikoTransport, RunKey

Handler = Callable[[paramiko.Channel, str], None]
# The server's own threads see the connections these tests drop on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


class _SFTPHandle(paramiko.SFTPHandle):
    def stat(self) -> Any:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))


class _SFTP(paramiko.SFTPServerInterface):
    root: Path

    def _real(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def open(self, path: str, flags: int, attr: Any) -> Any:
        try:
            handle = _SFTPHandle(flags)
            handle.readfile = self._real(path).open("rb")
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        return handle

    def stat(self, path: str) -> Any:
        try:
            return paramiko.SFTPAttributes.from_stat(self._real(path).stat())
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    lstat = stat


class Guest(paramiko.ServerInterface):
    """A guest's SSH server: accepts one client key; exec runs the test's handler."""

    def __init__(self, client_key: RunKey, handler: Handler) -> None:
        self.client_key = client_key
        self.handler = handler

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return (
            paramiko.OPEN_SUCCEEDED
            if kind == "session"
            else paramiko.OPEN_FAILED_UNKNOWN_CHANNEL_TYPE
        )

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = key.get_base64() == self.client_key.public_b64
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=self.handler, args=(channel, command.decode()), daemon=True).start()
        return True


class Server:
    def __init__(self, root: Path, key: RunKey, handler: Handler) -> None:
        self.host_key = paramiko.Ed25519Key.from_private_key(io.StringIO(_host_key_pem()))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self.root, self.key, self.handler = root, key, handler
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def host_key_line(self) -> str:
        return f"ssh-ed25519 {self.host_key.get_base64()}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            _SFTP.root = self.root
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _SFTP)
            transport.start_server(server=Guest(self.key, self.handler))
            self.transports.append(transport)

    def drop(self) -> None:
        for transport in self.transports:
            transport.close()

    def close(self) -> None:
        self.drop()
        self.sock.close()


def _host_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        .decode()
    )


def guest_shell(root: Path, lines: list[bytes], pause: float = 0.0) -> Handler:
    """Handles the two commands the host sends: the tar upload and the job driver."""

    def handle(chan: paramiko.Channel, command: str) -> None:
        with contextlib.suppress(OSError):  # the test drops connections on purpose
            _handle(chan, command)

    def _handle(chan: paramiko.Channel, command: str) -> None:
        if "tar -x" in command:
            data = b""
            while True:
                chunk = chan.recv(65536)
                if not chunk:
                    break
                data += chunk
            target = root / command.split("-C ")[1].strip().lstrip("/")
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(target, filter="data")
            chan.send_exit_status(0)
        elif command.startswith("sleep"):
            time.sleep(float(command.split()[1]))
            chan.send_exit_status(0)
        else:
            for line in lines:
                chan.sendall(line)
                time.sleep(pause)
            chan.send_exit_status(0)
        chan.close()

    return handle


@pytest.fixture
def key() -> RunKey:
    return RunKey()


def connect(server: Server, key: RunKey, host_key: str | None = None) -> ParamikoTransport:
    deadline = time.monotonic() + 20
    return ParamikoTransport.connect(
        server.port, key, host_key or server.host_key_line, deadline, "test-guest"
    )


@pytest.fixture
def make_server(tmp_path: Path, key: RunKey) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(lines: list[bytes] | None = None, pause: float = 0.0) -> Server:
        server = Server(tmp_path, key, guest_shell(tmp_path, lines or [], pause))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def test_upload_then_read_back_with_the_size_checked(
    make_server: Callable[..., Server], key: RunKey, tmp_path: Path
) -> None:
    server = make_server()
    transport = connect(server, key)
    try:
        transport.put_files(
            {"a/1/artifact.bpf.o": b"\x7fELF" + b"x" * 100, "jobs.json": b"[]"}, "/tmp/bpfc"
        )
        assert (tmp_path / "tmp/bpfc/jobs.json").read_bytes() == b"[]"
        assert transport.get_bytes("/tmp/bpfc/a/1/artifact.bpf.o", 1000)[:4] == b"\x7fELF"
        with pytest.raises(OversizeError) as caught:
            transport.get_bytes("/tmp/bpfc/a/1/artifact.bpf.o", 50)
        assert caught.value.size == 104
        with pytest.raises(FileNotFoundError):
            transport.get_bytes("/tmp/bpfc/nothing", 10)
    finally:
        transport.close()


def test_a_guest_with_another_host_key_is_refused(
    make_server: Callable[..., Server], key: RunKey
) -> None:
    server = make_server()
    other = paramiko.Ed25519Key.from_private_key(io.StringIO(_host_key_pem()))
    with pytest.raises(TransportError, match="host key mismatch"):
        connect(server, key, f"ssh-ed25519 {other.get_base64()}")


def test_a_key_the_guest_does_not_know_never_gets_in(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_server()
    deadline = time.monotonic() + 3
    with pytest.raises(TransportError, match="did not answer"):
        ParamikoTransport.connect(server.port, RunKey(), server.host_key_line, deadline, "g")


def test_stream_yields_lines_split_across_reads(
    make_server: Callable[..., Server], key: RunKey
) -> None:
    server = make_server([b"start ab", b"c\ndone abc 0 0.1 exit\n", b"tail without newline"])
    transport = connect(server, key)
    try:
        lines = list(transport.stream("driver", idle_timeout=10))
    finally:
        transport.close()
    assert lines == ["start abc", "done abc 0 0.1 exit", "tail without newline"]


def test_a_line_without_end_is_cut_off_not_buffered_forever(
    make_server: Callable[..., Server], key: RunKey
) -> None:
    server = make_server([b"x" * 65536] * (MAX_LINE_BYTES // 65536 + 2))
    transport = connect(server, key)
    try:
        with pytest.raises(OversizeError, match="line over"):
            list(transport.stream("driver", idle_timeout=10))
    finally:
        transport.close()


def test_a_silent_guest_hits_the_idle_timeout(
    make_server: Callable[..., Server], key: RunKey
) -> None:
    server = make_server([b"start a\n", b"done a 0 0 exit\n"], pause=3.0)
    transport = connect(server, key)
    try:
        with pytest.raises(TransportError, match="no progress"):
            list(transport.stream("driver", idle_timeout=1))
    finally:
        transport.close()


def test_a_dropped_connection_ends_the_stream_with_an_error(
    make_server: Callable[..., Server], key: RunKey
) -> None:
    server = make_server([b"start a\n"] + [b""] * 50, pause=0.1)
    transport = connect(server, key)
    try:
        stream = transport.stream("driver", idle_timeout=30)
        assert next(stream) == "start a"
        server.drop()
        with pytest.raises(TransportError):
            list(stream)
        with pytest.raises(TransportError):
            transport.run("true", 5)
    finally:
        transport.close()


def test_run_reports_a_timeout(make_server: Callable[..., Server], key: RunKey) -> None:
    server = make_server()
    transport = connect(server, key)
    try:
        result = transport.run("sleep 3", 0.5)
        assert result.timed_out
        assert transport.run("sleep 0", 10).exit_code == 0
    finally:
        transport.close()
