"""What every stage command shares: config arguments, the run directory, the data set, the device.

A stage command is ``weaktr STAGE [--config NAME_OR_PATH] [--run-dir DIR] [key=value ...]``: the
same layered config as ``weaktr run``, so a stage run alone does exactly what it does in a pipeline.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from weaktr.config import RunConfig, load_config, save_config
from weaktr.data.dataset import DatasetInfo
from weaktr.data.demo import generate_demo
from weaktr.engine.distributed import DistInfo, init_distributed


def add_config_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--config``, ``--run-dir`` and trailing ``key=value`` overrides."""
    parser.add_argument(
        "--config",
        "-c",
        default=default,
        help="packaged config name (voc, coco, demo, ...) or a YAML path; default: the VOC defaults",
    )
    parser.add_argument("--run-dir", help="output folder (overrides run_dir from the config)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seg_train.epochs=5"
    )


def load_run_config(args: argparse.Namespace) -> RunConfig:
    """The merged config of a command line; ``--run-dir`` wins over the config's ``run_dir``.

    ``weaktr run voc key=value`` and ``weaktr run --config voc key=value`` mean the same.
    """
    overrides = list(args.overrides or [])
    config = args.config
    if overrides and "=" not in overrides[0]:
        config = overrides.pop(0)
    if getattr(args, "run_dir", None):
        overrides.append(f"run_dir={args.run_dir}")
    return load_config(config, overrides)


@dataclass
class RunContext:
    """A loaded config with its run directory, data set and process placement."""

    cfg: RunConfig
    run_dir: Path
    dataset: DatasetInfo
    dist: DistInfo

    @property
    def device(self) -> torch.device:
        return self.dist.device


def resolve_dataset(cfg: RunConfig, run_dir: Path) -> DatasetInfo:
    """The prepared data set of ``cfg.data``; ``demo`` is generated into ``run_dir/data`` first."""
    if cfg.data.dataset == "demo":
        d = cfg.data.demo
        return generate_demo(run_dir / "data", d.n_train, d.n_val, d.size, d.n_classes, d.seed, workers=2)
    return DatasetInfo.load(cfg.data.dataset)


def open_run(cfg: RunConfig, save: bool = True) -> RunContext:
    """Join torchrun (if launched by it), set threads, prepare the data set and save the merged config."""
    dist = init_distributed(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main and save:
        save_config(cfg, run_dir / "config.yaml")
    dataset = resolve_dataset(cfg, run_dir) if dist.is_main else None
    if dist.world > 1:
        torch.distributed.barrier()
        dataset = dataset or resolve_dataset(cfg, run_dir)
    assert dataset is not None
    return RunContext(cfg=cfg, run_dir=run_dir, dataset=dataset, dist=dist)
