"""``weaktr report RUN_DIR``: (re)build the HTML report of a run directory from what it holds."""

from __future__ import annotations

import argparse
from pathlib import Path

from weaktr.runtime.distributed import resolve_device


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="build RUN_DIR/report/index.html (summary, CAMs, AAF weights, predictions, curves)",
        description="Build the visual report of a run directory. Stages that have not run are listed "
        "as absent; nothing outside RUN_DIR/report is written.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory made by 'weaktr run'")
    p.add_argument("--examples", type=int, help="sample images per figure (default: report.n_examples)")
    p.add_argument("--device", default="cpu", help="device for the CAM network: cpu, cuda or auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weaktr.report.html import build_report  # matplotlib loads only when a report is built

    index = build_report(args.run_dir, args.examples, resolve_device(args.device))
    print(index)
    return 0
