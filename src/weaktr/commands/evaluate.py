"""``weaktr evaluate --pred DIR``: mIoU, precision and recall of label maps (or CAMs) against GT.

Works for anything written as ``<id>.png`` label maps (seeds, pseudo masks, predictions) and, with
``--cams``, for CAM ``.npz`` folders, whose background threshold is swept over ``seeds.sweep``. The
classes and the ground truth come from the configured data set unless ``--gt`` names another folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from weaktr.commands.common import add_config_args, load_run_config


def execute(args: argparse.Namespace) -> int:
    from weaktr.runtime.context import open_run
    from weaktr.stages.scoring import evaluate_stage

    ctx = open_run(load_run_config(args), save=False)
    pred = Path(args.pred)
    data = ctx.cfg.data
    split = args.split or (data.cam_eval_split_or_train if args.cams else data.val_split)
    name = args.name or pred.name
    evaluate_stage(ctx, pred, split, name, sweep=args.cams, gt=args.gt)
    if ctx.dist.is_main:
        print(f"metrics: {ctx.layout.metrics(name).resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score label maps or CAMs against ground truth", description=__doc__)
    p.add_argument(
        "--pred", required=True, help="folder of <id>.png label maps (or <id>.npz CAMs with --cams)"
    )
    p.add_argument(
        "--split", help="split to score (default: data.val_split; with --cams data.cam_eval_split)"
    )
    p.add_argument("--cams", action="store_true", help="the folder holds CAMs: sweep the threshold")
    p.add_argument("--gt", help="ground-truth folder of <id>.png (default: the data set's masks)")
    p.add_argument(
        "--name", help="name of the metrics file RUN_DIR/metrics/NAME.json (default: the folder name)"
    )
    add_config_args(p)
    p.set_defaults(func=execute)
