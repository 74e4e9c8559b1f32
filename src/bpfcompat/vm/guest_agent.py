"""Runs in the guest (python3 -I -S /bpfcompat/agent.py, started by init): wait on the
console for the host's handoff line, then set the clock, reseed the kernel's random pool,
install the run's keys and start dropbear.

It is started, and its imports paid for, before the point where the host may save the
guest as a snapshot; everything after the read happens per guest, restored or booted. The
host side and the line's format are in vm/handoff.py. Python 3.9+ stdlib only: this file
is copied into the guest image, nothing of the host package comes with it.
"""

import fcntl
import os
import re
import struct
import termios
import time

CONSOLE = "/dev/console"
WAITING = b"bpfcompat-guest-waiting\n"
HOST_KEY = "/run/bpfcompat-host-key"
AUTHORIZED = "/root/.ssh/authorized_keys"
MAX_LINE = 4096
# include/uapi/linux/random.h: _IOW('R', 0x03, int[2]) and _IO('R', 0x07), the same
# numbers on every architecture using the generic ioctl encoding (x86, arm64).
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
HANDOFF = re.compile(
    rb"bpfcompat-handoff 1 (?P<nonce>[0-9a-f]{32}) (?P<now>[0-9]{1,12}\.[0-9]{6}) "
    rb"(?P<entropy>(?:[0-9a-f]{2}){16,256}) (?P<client>[A-Za-z0-9+/=]{16,200}) "
    rb"(?P<host>(?:[0-9a-f]{2}){80,90})\n"
)


def say(fd: int, text: str) -> None:
    os.write(fd, text.encode() + b"\n")


def quiet_console(fd: int) -> None:
    """Raw input, no echo: the handoff line carries a private key and must not be echoed
    back onto the console, which the host logs."""
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(termios.ICRNL | termios.INLCR | termios.IGNCR | termios.IXON)
    attrs[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def read_handoff(fd: int) -> "re.Match[bytes]":
    """The first well-formed handoff line; anything else is reported and skipped."""
    buffer = b""
    while True:
        chunk = os.read(fd, MAX_LINE)
        if not chunk:
            time.sleep(0.01)
            continue
        buffer += chunk
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            match = HANDOFF.fullmatch(line + b"\n")
            if match:
                return match
            say(fd, f"bpfcompat-agent: ignored a malformed handoff line ({len(line)} bytes)")
        if len(buffer) > MAX_LINE:
            say(fd, "bpfcompat-agent: ignored an overlong handoff line")
            buffer = b""


def reseed(entropy: bytes) -> None:
    """Credit the host's bytes to the input pool and make the kernel's CRNG reseed from it
    now, rather than at its next scheduled reseed (a minute away, in a restored guest's
    frozen notion of time)."""
    fd = os.open("/dev/urandom", os.O_WRONLY)
    try:
        packed = struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy
        fcntl.ioctl(fd, RNDADDENTROPY, packed)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)


def write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def main() -> None:
    fd = os.open(CONSOLE, os.O_RDWR | os.O_NOCTTY)
    quiet_console(fd)
    os.write(fd, WAITING)
    match = read_handoff(fd)
    received = time.monotonic()
    now = float(match.group("now")) + (time.monotonic() - received)
    time.clock_settime(time.CLOCK_REALTIME, now)
    reseed(bytes.fromhex(match.group("entropy").decode()))
    client = match.group("client").decode()
    write_private(AUTHORIZED, f"ssh-ed25519 {client} bpfcompat-run\n".encode())
    write_private(HOST_KEY, bytes.fromhex(match.group("host").decode()))
    # -s: keys only; -j -k: no port forwarding; -W: a 1 MiB window for artifact uploads.
    argv = ["dropbear", "-s", "-j", "-k", "-W", "1048576", "-p", "22", "-r", HOST_KEY]
    pid = os.posix_spawn("/usr/sbin/dropbear", argv, os.environ)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        say(fd, f"bpfcompat-agent: dropbear exited with status {status}")
        return
    with open("/proc/uptime") as fh:
        uptime = fh.read().split()[0]
    say(fd, f"bpfcompat-guest-ready {match.group('nonce').decode()} {uptime}")


if __name__ == "__main__":
    main()
