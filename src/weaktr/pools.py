"""Process pools whose forked workers leave the parent's garbage to the parent.

A forked worker inherits every object of its parent, garbage not yet collected included. When the
worker's cyclic GC collects that garbage, its finalizers run inside the worker, in the middle of
whatever the worker is doing. In the test suite one such collection fell inside ``np.load``'s
header parse (``ast.literal_eval``) in a seeds worker, and CPython 3.11 failed a valid CAM file with
"AST constructor recursion depth mismatch". The gc documentation's advice for forking servers
avoids it: collect in the parent before the fork, and freeze in the worker what it inherited, so
that its collections see only its own objects.

Whatever a job raises reaches the caller as one error naming its item: run the job function through
:class:`PerItem` (in a pool or in-process alike, so the message does not depend on the worker count).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.pool import Pool
from typing import Generic, TypeVar

from weaktr.errors import item_error

T = TypeVar("T")
R = TypeVar("R")


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes that never collect inherited objects."""
    gc.collect()
    return ProcessPoolExecutor(max_workers=workers, initializer=gc.freeze)


def fork_pool(workers: int) -> Pool:
    """A fork-started ``multiprocessing`` pool of ``workers`` processes, frozen the same way."""
    gc.collect()
    return mp.get_context("fork").Pool(workers, initializer=gc.freeze)


@dataclass(frozen=True)
class PerItem(Generic[T, R]):
    """``fn(job)``, its failure raised as :func:`~weaktr.errors.item_error` of ``item(job)``.

    Both functions must be module-level for a process pool (the wrapper pickles with them); the
    item names what failed for the user, e.g. ``"image 2008_000123"``.
    """

    fn: Callable[[T], R]
    item: Callable[[T], str]

    def __call__(self, job: T) -> R:
        try:
            return self.fn(job)
        except Exception as exc:
            raise item_error(self.item(job), exc) from None
