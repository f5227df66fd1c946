"""What every stage command shares: the config arguments (``--config``, ``--run-dir``, ``key=value``).

A stage command is ``weaktr STAGE [--config NAME_OR_PATH] [--run-dir DIR] [key=value ...]``: the
same layered config as ``weaktr run``, so a stage run alone does exactly what it does in a pipeline.

Command modules import only what their parser needs at import time (``weaktr --help`` loads them
all and must not load torch); the machinery of a command is imported inside its ``execute``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from weaktr.config import RunConfig


def add_config_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--config``, ``--run-dir`` and trailing ``key=value`` overrides."""
    parser.add_argument(
        "--config",
        "-c",
        default=default,
        help="packaged config name (voc, coco, demo, ...) or a YAML path; default: the VOC defaults",
    )
    parser.add_argument("--run-dir", help="output folder (overrides run_dir from the config)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seg_train.epochs=5"
    )


def load_run_config(args: argparse.Namespace) -> RunConfig:
    """The merged config of a command line; ``--run-dir`` wins over the config's ``run_dir``.

    ``weaktr run voc key=value`` and ``weaktr run --config voc key=value`` mean the same.
    """
    from weaktr.config import load_config

    overrides = list(args.overrides or [])
    config = args.config
    if overrides and "=" not in overrides[0]:
        config = overrides.pop(0)
    if getattr(args, "run_dir", None):
        overrides.append(f"run_dir={args.run_dir}")
    return load_config(config, overrides)
