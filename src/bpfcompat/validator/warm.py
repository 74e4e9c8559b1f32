"""``python3 -m bpfcompat.validator.warm``: fill this boot's probe cache before any job.

The guest's init runs it in agent mode, before the host may save the guest as a snapshot:
every guest restored from that snapshot is the same boot of the same kernel, so the
feature probe (hundreds of test programs, seconds under emulation) is paid once per
kernel instead of once per guest. Exits 0 whatever happens: a validator run probes again
when the cache has no answer.
"""

from __future__ import annotations

import json

from .probes import bpftool_key, run_bpftool_probe
from .system import BootCache
from .util import find_executable


def main() -> int:
    bpftool = find_executable("bpftool")
    cache = BootCache()
    if bpftool is None or not cache.usable:
        return 0
    key = bpftool_key(bpftool)
    if isinstance(cache.get("bpftool-probe", key), str):
        return 0
    output, _ = run_bpftool_probe(bpftool)
    try:
        conclusive = output is not None and isinstance(json.loads(output), dict)
    except ValueError:
        conclusive = False
    if conclusive:  # only what a validator run would itself have cached
        cache.put("bpftool-probe", key, output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
