"""``weaktr train-seg [--seeds DIR] [--gt DIR]``: phase-2 online retraining of the segmenter on seeds."""

from __future__ import annotations

import argparse
from pathlib import Path

from weaktr.commands.common import add_config_args, load_run_config


def execute(args: argparse.Namespace) -> int:
    """Train (or resume) the segmenter; print where the checkpoint and the log are."""
    from weaktr.runtime.context import open_run
    from weaktr.stages.train_seg import train_seg

    ctx = open_run(load_run_config(args))
    default = ctx.layout.seeds(ctx.cfg.seeds.crf)
    seeds = Path(args.seeds) if args.seeds else default
    model = train_seg(ctx, seeds, gt_dir=Path(args.gt) if args.gt else None)
    if ctx.dist.is_main:
        print(f"segmenter: {model.resolve()}")
        print(f"  log:       {ctx.layout.seg_log.resolve()}")
        print(f"  selection: {ctx.layout.seg_selection.resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-seg",
        help="train the segmenter with the gradient-clipping decoder on seed label maps",
        description=__doc__,
    )
    p.add_argument(
        "--seeds",
        metavar="DIR",
        help="folder of <id>.png label maps (default: RUN_DIR/seeds_crf; RUN_DIR/seeds if seeds.crf=false)",
    )
    p.add_argument(
        "--gt",
        metavar="DIR",
        help="ground truth of the training images: logs the precision of the pixels the loss keeps",
    )
    add_config_args(p)
    p.set_defaults(func=execute)
