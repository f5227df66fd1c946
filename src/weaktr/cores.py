"""How many worker processes (or threads) fit the cores this process may use.

Every worker count of the package (the configs' ``num_workers`` and ``workers``, the pools of the data
check, the demo generator and ``prepare``) is an upper bound that :func:`cap_workers` lowers to the
cores the process may run on: more workers than cores only time-slice against each other and the
main process, and torch's DataLoader warns about them. This module sits on the bottom floor so that
data, engine, stages and CLI code all ask the same question the same way.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("weaktr")
_said: set[tuple[str, int, int]] = set()  # (what, requested, used) already logged by this process


def usable_cores(share: int = 1) -> int:
    """Cores this process may run on (its CPU affinity, as torch counts them), split among ``share``
    processes of a node (torchrun's ranks); at least 1."""
    # macOS and Windows have no affinity: every core counts there
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, share))


def cap_workers(requested: int, what: str = "workers", share: int = 1, level: int = logging.INFO) -> int:
    """``requested`` workers, lowered to :func:`usable_cores` (``share``); 0 stays 0 (no workers).

    A lowered count is logged once per process at ``level``, naming ``what`` (the config key or flag
    the count came from), so that a config written for a bigger machine explains itself in the log.
    """
    if requested <= 0:
        return 0
    cores = usable_cores(share)
    used = min(requested, cores)
    if used < requested and (what, requested, used) not in _said:
        _said.add((what, requested, used))
        log.log(level, "%s: %d asked for, %d used (%d core(s) usable)", what, requested, used, cores)
    return used
