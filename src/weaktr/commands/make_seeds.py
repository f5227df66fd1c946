"""``weaktr make-seeds``: threshold CAMs into seed label maps, refined by the label CRF by default."""

from __future__ import annotations

import argparse
from pathlib import Path

from weaktr.commands.common import add_config_args, load_run_config
from weaktr.extras import require


def execute(args: argparse.Namespace) -> int:
    cfg = load_run_config(args)
    crf = cfg.seeds.crf and not args.no_crf
    if crf:
        require("crf", "the seeds' label CRF (seeds.crf; --no-crf skips it)")
    from weaktr.runtime.context import open_run
    from weaktr.stages.seeds import seeds_stage

    ctx = open_run(cfg)
    cams = Path(args.cams) if args.cams else ctx.layout.cams
    out = Path(args.out) if args.out else ctx.layout.seeds(crf)
    seeds_stage(ctx, cams, crf=crf, out_dir=out)
    if ctx.dist.is_main:
        print(f"seeds: {out.resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-seeds", help="CAMs → seed label PNGs (+ label CRF)", description=__doc__)
    p.add_argument("--cams", help="CAM folder (default: RUN_DIR/cams)")
    p.add_argument("--no-crf", action="store_true", help="skip the label CRF (default: seeds.crf)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/seeds_crf, or RUN_DIR/seeds without CRF)")
    add_config_args(p)
    p.set_defaults(func=execute)
