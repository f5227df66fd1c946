"""``weaktr run CONFIG [key=value ...]``: the whole pipeline into one run directory, resumable."""

from __future__ import annotations

import argparse

from weaktr.choices import STAGE_NAMES
from weaktr.commands.common import add_config_args, load_run_config


def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    """``--force STAGE`` and ``--until STAGE``, shared by ``run`` and ``demo``."""
    parser.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help=f"redo this stage and the stages that read its outputs (repeatable): {', '.join(STAGE_NAMES)}",
    )
    parser.add_argument("--until", metavar="STAGE", help="stop after this stage")


def execute(args: argparse.Namespace) -> int:
    """Run the pipeline for the parsed arguments and print the results table."""
    from weaktr.pipeline import check_stage_names, format_summary, require_extras, run_pipeline
    from weaktr.runtime.context import open_run

    cfg = load_run_config(args)
    check_stage_names([*args.force, *([args.until] if args.until else [])])
    require_extras(cfg, args.until)  # before open_run writes (or generates) anything
    ctx = open_run(cfg)
    summary = run_pipeline(ctx, force=args.force, until=args.until)
    if ctx.dist.is_main:
        print(format_summary(summary))
        print(f"\nresults: {ctx.run_dir.resolve()}")
        lay = ctx.layout
        print(f"  summary: {lay.summary.resolve()}")
        print(f"  log:     {lay.log_txt.resolve()}")
        if lay.report.is_file():
            print(f"  report:  {lay.report.resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run every stage (train CAM → CAMs → seeds → segmenter → predict → report)",
        description=__doc__,
    )
    add_config_args(p)
    add_pipeline_args(p)
    p.set_defaults(func=execute)
