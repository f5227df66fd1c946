"""One error type for bad user input, so the CLI can print it without a traceback."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# How an InputError raised in a DataLoader worker ends its re-raised message (torch puts the worker's
# traceback text into the message): the last line is "weaktr.errors.InputError: <path>: <problem>".
_WORKER_LAST_LINE = re.compile(r"^weaktr\.errors\.\w+: (.+)$", re.MULTILINE)


class InputError(ValueError):
    """A user-supplied file, folder or value is unusable; the message names it and the problem."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuild with the path when crossing processes (the CRF pool, a DataLoader worker)."""
        return type(self), (self.problem, self.path)

    def lines(self) -> list[str]:
        """What the CLI prints, one line each: the message, or the original one of a worker's error."""
        found = _WORKER_LAST_LINE.findall(str(self))
        return [found[-1]] if "Original Traceback" in str(self) and found else [str(self)]


class DataCheckError(InputError):
    """Several unusable inputs found at once (a data check), shown as one line per problem."""

    def __init__(self, errors: Sequence[InputError], total: int | None = None, checked: int = 0) -> None:
        self.errors = list(errors)
        self.total = len(self.errors) if total is None else total
        self.checked = checked
        first = self.errors[0] if self.errors else InputError("no problems given")
        super().__init__(first.problem, first.path)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.errors, self.total, self.checked)

    def lines(self) -> list[str]:
        out = [str(e) for e in self.errors]
        if self.total > len(self.errors):
            of = f" of {self.checked}" if self.checked else ""
            out.append(f"{self.total} unusable files{of} in all; the first {len(self.errors)} are listed")
        return out
