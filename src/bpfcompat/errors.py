"""The package's exception tree, translated from third-party errors at each boundary.

BpfcompatError
├── ConfigError        bad kernels.yaml / manifest / command-line input
├── ArtifactError      an input artifact that cannot be read at all
├── FetchError         kernel packages could not be fetched or extracted
│   └── BuildError     a kernel could not be built from source (names the step)
├── ImageError         the guest image could not be built
├── VMError            QEMU missing, boot failure, boot timeout
│   ├── GuestCrash     the guest panicked or oopsed (console evidence attached)
│   └── SnapshotError  a guest could not be saved or restored (the caller boots instead)
├── TransportError     SSH to the guest failed or dropped
│   └── OversizeError  the guest offered more bytes than the host accepts
├── StoreError         the SQLite store cannot be used
└── ReportError        a report cannot be written, or a run export cannot be read

The CLI catches BpfcompatError, prints its one-line message and exits 1.
"""

from __future__ import annotations


class BpfcompatError(Exception):
    """Base of every error the CLI reports as one line without a traceback."""


class ConfigError(BpfcompatError):
    pass


class ArtifactError(BpfcompatError):
    pass


class FetchError(BpfcompatError):
    pass


class BuildError(FetchError):
    pass


class ImageError(BpfcompatError):
    pass


class VMError(BpfcompatError):
    pass


class GuestCrash(VMError):
    """The guest died; `console_tail` holds the lines that prove it."""

    def __init__(self, message: str, console_tail: str = "") -> None:
        super().__init__(message)
        self.console_tail = console_tail


class SnapshotError(VMError):
    pass


class TransportError(BpfcompatError):
    pass


class OversizeError(TransportError):
    """A guest file or line over the host's cap; `size` is what the guest offered."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class StoreError(BpfcompatError):
    pass


class ReportError(BpfcompatError):
    pass
