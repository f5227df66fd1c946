"""``weaktr train-cam [--config C] [key=value ...]``: phase 1, the CAM network (resumes by itself)."""

from __future__ import annotations

import argparse

from weaktr.commands.common import add_config_args, load_run_config, open_run
from weaktr.engine.logging import setup_logging
from weaktr.engine.train_cam import train_cam


def execute(args: argparse.Namespace) -> int:
    ctx = open_run(load_run_config(args))
    setup_logging(ctx.run_dir, ctx.dist.is_main)
    model = train_cam(ctx)
    if ctx.dist.is_main:
        cam = model.parent
        print(f"CAM model: {model.resolve()}")
        print(f"  log: {(cam / 'log.jsonl').resolve()}; selection: {(cam / 'selection.json').resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-cam",
        help="phase 1: train the CAM network on image-level labels",
        description=__doc__,
    )
    add_config_args(p)
    p.set_defaults(func=execute)
