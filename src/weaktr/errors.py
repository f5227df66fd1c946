"""One error type for bad user input, so the CLI can print it without a traceback."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A user-supplied file, folder or value is unusable; the message names it and the problem."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)
