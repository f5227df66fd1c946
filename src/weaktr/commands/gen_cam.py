"""``weaktr gen-cam``: multi-scale + flip CAMs (one ``.npz`` per image) from a trained CAM network."""

from __future__ import annotations

import argparse
from pathlib import Path

from weaktr.choices import CAM_KINDS
from weaktr.commands.common import add_config_args, load_run_config


def execute(args: argparse.Namespace) -> int:
    from weaktr.runtime.context import open_run
    from weaktr.stages.gen_cam import gen_cam_stage

    ctx = open_run(load_run_config(args))
    checkpoint = Path(args.checkpoint) if args.checkpoint else ctx.layout.cam_model
    out = gen_cam_stage(ctx, checkpoint, split=args.split, kind=args.kind, out_dir=args.out)
    if ctx.dist.is_main:
        print(f"CAMs: {out.resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gen-cam", help="multi-scale CAMs of a split (.npz per image)", description=__doc__)
    p.add_argument("--checkpoint", help="CAM model (default: RUN_DIR/cam/model.safetensors)")
    p.add_argument("--split", help="data set split (default: data.train_split)")
    p.add_argument(
        "--kind",
        choices=CAM_KINDS,
        default="default",
        help="which map: the model's own (default), coarse, fused (no patch-attention) or refined",
    )
    p.add_argument("--out", help="output folder (default: RUN_DIR/cams)")
    add_config_args(p)
    p.set_defaults(func=execute)
