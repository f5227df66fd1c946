"""Errors the CLI prints as one line: bad user input (:class:`InputError`, exit 2), and a bug met while
working on one item in a worker (:class:`ItemError`, exit 1, its traceback kept for the log).

Pools and DataLoaders run each item's work through :func:`item_error` (``pools.PerItem``,
``data.loader.ItemLoader``), so whatever fails in a worker reaches the main process as structure
(the item, the cause, the worker's traceback) rather than as text to parse.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# How an InputError raised in a plain DataLoader's worker ends its re-raised message (torch puts the
# worker's traceback text into the message): the last line is "weaktr.errors.InputError: <path>: <problem>".
# weaktr's own loaders (data.loader.ItemLoader) hand the error object over instead.
_WORKER_LAST_LINE = re.compile(r"^weaktr\.errors\.\w+: (.+)$", re.MULTILINE)


class InputError(ValueError):
    """A user-supplied file, folder or value is unusable; the message names it and the problem."""

    item: str | None = None  # the item being worked on when raised in a pool ("image 2008_000123")

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuild with the path (and item) when crossing processes (a pool, a DataLoader worker)."""
        return type(self), (self.problem, self.path), {"item": self.item}

    def lines(self) -> list[str]:
        """What the CLI prints, one line each: the message (after the item when no path names it), or
        the original line of an error that torch re-raised from a plain DataLoader's worker."""
        found = _WORKER_LAST_LINE.findall(str(self))
        if "Original Traceback" in str(self) and found:
            return [found[-1]]
        return [f"{self.item}: {self}" if self.item and self.path is None else str(self)]


class DataCheckError(InputError):
    """Several unusable inputs found at once (a data check), shown as one line per problem."""

    def __init__(self, errors: Sequence[InputError], total: int | None = None, checked: int = 0) -> None:
        self.errors = list(errors)
        self.total = len(self.errors) if total is None else total
        self.checked = checked
        first = self.errors[0] if self.errors else InputError("no problems given")
        super().__init__(first.problem, first.path)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.errors, self.total, self.checked), {"item": self.item}

    def lines(self) -> list[str]:
        out = [str(e) for e in self.errors]
        if self.total > len(self.errors):
            of = f" of {self.checked}" if self.checked else ""
            out.append(f"{self.total} unusable files{of} in all; the first {len(self.errors)} are listed")
        return out


class ItemError(Exception):
    """A bug (any error but :class:`InputError`) met while working on one item, usually in a worker.

    Plain strings only, so it always pickles back to the main process: the item ("image 2008_000123"),
    the cause's class name and message, and the worker's traceback for the log.
    """

    def __init__(self, item: str, cause: str, message: str, traceback_text: str = "") -> None:
        self.item, self.cause, self.message, self.traceback_text = item, cause, message, traceback_text
        super().__init__(f"{item}: {cause}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.item, self.cause, self.message, self.traceback_text)


def item_error(item: str, exc: Exception) -> Exception:
    """What to raise for ``exc`` met while working on ``item``: an :class:`InputError` itself (it names
    the file or now the item), any other error as an :class:`ItemError` with its traceback text."""
    if isinstance(exc, ItemError):  # an inner item already named it
        return exc
    if isinstance(exc, InputError):
        if exc.item is None:
            exc.item = item
        return exc
    return ItemError(item, type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)))
