"""The ``weaktr`` command line: one subcommand per module of ``weaktr.commands``.

Every command module defines ``register(subparsers)``, which adds its parser and sets ``func``
(called with the parsed namespace, returning an exit code). A command module imports only what its
parser needs; its machinery (torch, the pipeline, the stages) loads inside ``func``, so that
``weaktr --help`` and a mistyped command answer at once.

Every failure is one line, ``weaktr COMMAND: error: ...``, wherever it happened (here, in a
DataLoader worker, a process pool or a thread pool):

* bad input (:class:`~weaktr.errors.InputError`): the file or item and the problem, exit 2;
* a bug (any other error; an :class:`~weaktr.errors.ItemError` names the image a worker was on):
  the cause, exit 1; the full traceback goes to the run's ``log.txt``, and ``WEAKTR_DEBUG=1``
  prints it too;
* Ctrl-C: exit 130, with how to resume.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path

from weaktr import __version__
from weaktr.errors import InputError, ItemError

# the command modules of weaktr.commands, in the order ``weaktr --help`` lists them, one per line
# (the command is the name with '-' for '_': train_cam -> ``weaktr train-cam``)
COMMANDS = (
    "run",
    "demo",
    "prepare",
    "train_cam",
    "gen_cam",
    "make_seeds",
    "train_seg",
    "predict",
    "evaluate",
    "convert",
    "export",
    "export_model",
    "report",
    "ablate",
    "pretrain",
)
DEBUG_ENV = "WEAKTR_DEBUG"  # set (to anything but 0) to print a bug's full traceback too


def build_parser() -> argparse.ArgumentParser:
    """The parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="weaktr",
        description="WeakTr: semantic segmentation from image-level labels with plain vision transformers.",
    )
    parser.add_argument("--version", action="version", version=f"weaktr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        import_module(f"weaktr.commands.{name}").register(sub)
    return parser


def _to_log_file(text: str) -> Path | None:
    """Write ``text`` to the run's ``log.txt`` if this command opened a run; the file, or None."""
    # without weaktr.runtime.logging loaded no run was opened, so there is no log file (and the error
    # path of a light command does not load torch for nothing)
    run_logging = sys.modules.get("weaktr.runtime.logging")
    return run_logging.log_file_only(text) if run_logging is not None else None


def _close_log_file() -> None:
    run_logging = sys.modules.get("weaktr.runtime.logging")
    if run_logging is not None:
        run_logging.close_log_file()


def _leave_process_group() -> None:
    """Leave torchrun's process group if the command joined one (``open_run``), as torch asks of a
    program before it exits (NCCL warns on every rank otherwise)."""
    distributed = sys.modules.get("weaktr.runtime.distributed")  # not loaded: no group was joined
    if distributed is not None:
        distributed.cleanup()


def _shown(path: Path) -> str:
    """``path`` as the user would type it: relative to the current folder when under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _cause(name: str, message: str) -> str:
    """'ValueError: the first line of the message ...' (the log has all of it)."""
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    if not lines:
        return name
    return f"{name}: {lines[0]}" + (" ..." if len(lines) > 1 else "")


def _report_input_error(command: str, exc: InputError) -> int:
    for line in exc.lines():
        print(f"weaktr {command}: error: {line}", file=sys.stderr)
        _to_log_file(f"error: {line}")
    return 2


def _report_bug(command: str, exc: Exception) -> int:
    """One line naming the cause (and the item a worker was on); the traceback to the log, exit 1."""
    text = "".join(traceback.format_exception(exc))
    if isinstance(exc, ItemError):
        line = f"{exc.item}: {_cause(exc.cause, exc.message)}"
        if exc.traceback_text:
            text += f"\nwhere {exc.item} failed:\n{exc.traceback_text}"
    else:
        line = _cause(type(exc).__name__, str(exc))
    log = _to_log_file(f"error: {line}\n{text}")
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        print(text, file=sys.stderr, end="" if text.endswith("\n") else "\n")
        where = f"full traceback above, also in {_shown(log)}" if log else "full traceback above"
    elif log:
        where = f"full traceback in {_shown(log)}; {DEBUG_ENV}=1 prints it"
    else:
        where = f"{DEBUG_ENV}=1 prints the full traceback"
    print(f"weaktr {command}: error: {line} ({where})", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``weaktr`` console script and ``python -m weaktr``."""
    parser = build_parser()
    # overrides may stand on either side of options (``run voc --run-dir X a=1``): argparse leaves
    # the ones after an option unparsed, so they are collected here
    args, extra = parser.parse_known_args(argv)
    flags = [e for e in extra if e.startswith("-")]
    if flags or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(flags or extra)}")
    if extra:
        args.overrides = [*(args.overrides or []), *extra]
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
        )
    try:
        code = int(args.func(args) or 0)
        # on success only: after a failure other ranks may still wait in a collective, and leaving
        # the group could wait on them; the process exits anyway
        _leave_process_group()
        return code
    except InputError as exc:  # raised here, or in a DataLoader worker or a CRF / check process
        return _report_input_error(args.command, exc)
    except KeyboardInterrupt:
        print(f"weaktr {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line here, the traceback in log.txt
        return _report_bug(args.command, exc)
    finally:
        _close_log_file()
