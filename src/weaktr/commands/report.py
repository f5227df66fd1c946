"""``weaktr report RUN_DIR``: (re)build the HTML report of a run directory from what it holds."""

from __future__ import annotations

import argparse
from pathlib import Path

from weaktr.extras import require


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="build RUN_DIR/report/index.html (summary, CAMs, AAF weights, predictions, curves)",
        description="Build the visual report of a run directory from its artefacts (no model is loaded: "
        "the CAM views come from the views stage). Stages that have not run are listed as absent; "
        "nothing outside RUN_DIR/report is written.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory made by 'weaktr run'")
    p.add_argument("--examples", type=int, help="sample images per figure (default: report.n_examples)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require("viz", "the report")  # before anything is read or written
    from weaktr.report.render import build_report

    index = build_report(args.run_dir, args.examples)
    print(index)
    return 0
