"""Forked pool workers never run the finalizers of objects they inherited from the parent."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from weaktr.pools import fork_pool, process_pool

HELD: list[Any] = []  # alive in the parent at the fork; a worker drops its copy


class Cyclic:
    """Freed by the cyclic GC only; its finalizer names the process that ran it."""

    def __init__(self, log: Path) -> None:
        self.me, self.log = self, log

    def __del__(self) -> None:
        with self.log.open("a") as f:
            f.write(f"{os.getpid()}\n")


def drop_and_collect(_: int) -> int:
    HELD.clear()
    gc.collect()
    return os.getpid()


@pytest.mark.parametrize("make", [process_pool, fork_pool])
def test_workers_leave_inherited_objects_to_the_parent(make: Callable[[int], Any], tmp_path: Path) -> None:
    log = tmp_path / "finalized.txt"
    HELD.append(Cyclic(log))
    try:
        with make(2) as pool:
            if hasattr(pool, "submit"):
                workers = {pool.submit(drop_and_collect, i).result() for i in range(4)}
            else:
                workers = set(pool.map(drop_and_collect, range(4)))
    finally:
        HELD.clear()
        gc.collect()
    assert workers and os.getpid() not in workers
    assert log.read_text().split() == [str(os.getpid())]  # once, in the parent: no worker ran it
