"""The ``weaktr`` command line: one subcommand per stage, each a thin wrapper in ``weaktr.commands``.

Every command module defines ``register(subparsers)``, which adds its parser and sets ``func``
(called with the parsed namespace, returning an exit code). Bad input (``InputError``) is printed
as one line naming the file and the problem (one per file for a failed data check), with exit code 2,
instead of a traceback; an InputError that torch re-raises from a DataLoader worker, with the worker's
traceback in its message, is reduced to that original line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from weaktr import __version__
from weaktr.commands import (
    ablate,
    convert,
    demo,
    evaluate,
    export,
    export_model,
    gen_cam,
    make_seeds,
    predict,
    prepare,
    report,
    run,
    train_cam,
    train_seg,
)
from weaktr.errors import InputError

# module name -> command module, in the order ``weaktr --help`` lists them (the command is the
# name with '-' for '_': train_cam -> ``weaktr train-cam``)
COMMANDS = {
    "run": run,
    "demo": demo,
    "prepare": prepare,
    "train_cam": train_cam,
    "gen_cam": gen_cam,
    "make_seeds": make_seeds,
    "train_seg": train_seg,
    "predict": predict,
    "evaluate": evaluate,
    "convert": convert,
    "export": export,
    "export_model": export_model,
    "report": report,
    "ablate": ablate,
}


def build_parser() -> argparse.ArgumentParser:
    """The parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="weaktr",
        description="WeakTr: semantic segmentation from image-level labels with plain vision transformers.",
    )
    parser.add_argument("--version", action="version", version=f"weaktr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.register(sub)
    return parser


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
        return int(args.func(args) or 0)
    except InputError as exc:  # raised here, or in a DataLoader worker or a CRF / check process
        for line in exc.lines():
            print(f"weaktr {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"weaktr {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
