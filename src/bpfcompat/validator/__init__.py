"""The in-guest validator: one BPF object, one kernel, one JSON result.

Baked into every guest image as a package and run with ``python3 -m bpfcompat.validator``.
It imports only the standard library (ctypes over the guest's libbpf), so the host imports
its tables, limits and ELF reader too: one definition on both sides of the guest boundary.
"""

from .result import SCHEMA_VERSION, VALIDATOR_VERSION
from .tables import helper_id_from_name, helper_name_from_id

__all__ = ["SCHEMA_VERSION", "VALIDATOR_VERSION", "helper_id_from_name", "helper_name_from_id"]
