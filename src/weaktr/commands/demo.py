"""``weaktr demo``: the whole pipeline on the built-in generated data set, on a CPU, in minutes."""

from __future__ import annotations

import argparse

from weaktr.commands.common import add_config_args
from weaktr.commands.run import add_pipeline_args, execute


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="generate the demo data set and run the whole pipeline on it", description=__doc__
    )
    add_config_args(p, default="demo")
    add_pipeline_args(p)
    p.set_defaults(func=execute)
