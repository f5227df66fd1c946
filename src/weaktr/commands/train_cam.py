"""``weaktr train-cam [--config C] [key=value ...]``: phase 1, the CAM network (resumes by itself)."""

from __future__ import annotations

import argparse

from weaktr.commands.common import add_config_args, load_run_config


def execute(args: argparse.Namespace) -> int:
    from weaktr.runtime.context import open_run
    from weaktr.stages.train_cam import train_cam

    ctx = open_run(load_run_config(args))
    model = train_cam(ctx)
    if ctx.dist.is_main:
        lay = ctx.layout
        print(f"CAM model: {model.resolve()}")
        print(f"  log: {lay.cam_log.resolve()}; selection: {lay.cam_selection.resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-cam",
        help="phase 1: train the CAM network on image-level labels",
        description=__doc__,
    )
    add_config_args(p)
    p.set_defaults(func=execute)
