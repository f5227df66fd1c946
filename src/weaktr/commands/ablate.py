"""``weaktr ablate``: the paper's ablations re-run on the demo data (or any config)."""

from __future__ import annotations

import argparse
from pathlib import Path


def execute(args: argparse.Namespace) -> int:
    from weaktr.ablation import format_table, run_ablations

    rows = run_ablations(args.config, Path(args.out), list(args.overrides or []), only=args.only)
    print(format_table(rows))
    print(f"results: {Path(args.out).resolve() / 'ablation.md'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate",
        help="re-run the paper's ablations (AAF, patch attention, GC decoder, τ, S)",
        description=__doc__,
    )
    p.add_argument("--config", "-c", default="demo", help="base config (default: demo)")
    p.add_argument("--out", default="runs/ablate", help="folder for the variant runs and the table")
    p.add_argument(
        "--only", action="append", metavar="VARIANT", help="run only these variants (plus the base)"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every variant")
    p.set_defaults(func=execute)
