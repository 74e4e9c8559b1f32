"""What a guest waiting in agent mode is handed before it is used: the per-run keys, the
time and fresh entropy, as one line on its serial console.

The guest may be a restored snapshot that other runs restore too, so everything that must
differ between two guests arrives here, after the restore: the authorized client key, the
SSH host key the host pins (made here, on the host, from the host's own entropy), the
wall-clock time (a restored guest otherwise keeps the time it was saved at), and bytes the
guest credits to its random pool and reseeds from (otherwise two guests restored from one
snapshot would draw the same random numbers). The line goes into QEMU's stdin, a pipe only
this process holds, and the guest reads it with echo off, so it never reaches the console
log. The guest side is vm/guest_agent.py.
"""

from __future__ import annotations

import base64
import secrets
import struct
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bpfcompat.vm.ssh import RunKey

HANDOFF_TAG = "bpfcompat-handoff"
HANDOFF_VERSION = 1
ENTROPY_BYTES = 64


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class HostKey:
    """A per-run ed25519 host key: the private half in dropbear's own key-file layout
    (string "ssh-ed25519", then string seed||public, as dropbear's ed25519.c writes it),
    the public half as the `ssh-ed25519 AAAA...` line to pin."""

    def __init__(self) -> None:
        private = ed25519.Ed25519PrivateKey.generate()
        seed = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.dropbear = _ssh_string(b"ssh-ed25519") + _ssh_string(seed + public)
        blob = _ssh_string(b"ssh-ed25519") + _ssh_string(public)
        self.public_line = "ssh-ed25519 " + base64.b64encode(blob).decode()


@dataclass
class Handoff:
    client: RunKey
    host: HostKey = field(default_factory=HostKey)
    nonce: str = field(default_factory=lambda: secrets.token_hex(16))

    def line(self, now: float | None = None) -> bytes:
        """The line for the guest, stamped with the host's time as it is sent; fresh
        entropy each time it is made."""
        fields = (
            HANDOFF_TAG,
            str(HANDOFF_VERSION),
            self.nonce,
            f"{time.time() if now is None else now:.6f}",
            secrets.token_hex(ENTROPY_BYTES),
            self.client.public_b64,
            self.host.dropbear.hex(),
        )
        return (" ".join(fields) + "\n").encode()

    def __repr__(self) -> str:  # never print key material
        return f"Handoff(nonce={self.nonce})"
