"""The run a stage works in: its merged config, run directory layout, data set and process placement.

:func:`open_run` is the one door into a run: it joins torchrun when launched by it, sets threads,
gets the data set (checked before anything is written, unless ``prepare`` checked it), starts
``log.txt``, resolves how each use of a model executes (:class:`RunExecution`) and saves the merged
config beside the outputs, so that a stage run alone (``weaktr gen-cam``) does exactly what it does
inside ``weaktr run``.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from weaktr.config import RunConfig, save_config
from weaktr.data.check import check_files, dataset_items, fingerprint
from weaktr.data.demo import generate_demo
from weaktr.data.info import DatasetInfo
from weaktr.errors import InputError
from weaktr.io import sweep_temporaries, write_json
from weaktr.models.execution import ExecutionPolicy
from weaktr.runtime.distributed import DistInfo, barrier, init_distributed
from weaktr.runtime.layout import RunLayout
from weaktr.runtime.logging import setup_logging

log = logging.getLogger("weaktr")


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU has bf16 matmul units (AVX512-BF16 or AMX), by torch.cpu's own probes.

    Without them oneDNN emulates bf16, orders of magnitude slower than float32 (measured in
    docs/benchmarks.md, "bf16 needs a CPU that has it"): the demo's minutes would become hours.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


@functools.cache
def _warn_emulated_bf16() -> None:
    """Said once per process: amp_cpu asked for bf16 that this CPU would only emulate."""
    log.warning("amp_cpu: this CPU has no native bf16 (AVX512-BF16 or AMX), so the CPU runs float32")


@dataclass(frozen=True)
class RunExecution:
    """The execution policy of each use of a model in a run: the one place where the config's
    ``amp``, ``amp_cpu`` and ``fused_cpu`` keys (and ``WEAKTR_FUSED_CPU``) are read."""

    cam_train: ExecutionPolicy
    cam_gen: ExecutionPolicy
    seg_train: ExecutionPolicy
    seg_eval: ExecutionPolicy  # the per-epoch evaluation: seg_train's precision, predict's fast path
    predict: ExecutionPolicy

    @classmethod
    def resolve(cls, cfg: RunConfig, device: torch.device) -> RunExecution:
        """Each section's AMP request through :func:`amp_enabled`, with its ``fused_cpu`` switch."""

        def bf16(requested: bool) -> bool:
            return amp_enabled(device, requested, cfg.amp_cpu)

        return cls(
            cam_train=ExecutionPolicy.training(device, bf16(cfg.cam_train.amp)),
            cam_gen=ExecutionPolicy.cam_inference(device, bf16(cfg.cam_gen.amp), cfg.cam_gen.fused_cpu),
            seg_train=ExecutionPolicy.training(device, bf16(cfg.seg_train.amp)),
            seg_eval=ExecutionPolicy.seg_inference(device, bf16(cfg.seg_train.amp), cfg.predict.fused_cpu),
            predict=ExecutionPolicy.seg_inference(device, bf16(cfg.predict.amp), cfg.predict.fused_cpu),
        )


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

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    def clear_temporaries(self, *folders: Path) -> None:
        """Remove stale temporaries from output folders outside the run directory (``--out``) before a
        stage resumes into them; the main rank sweeps while the others wait. open_run swept the rest."""
        if self.dist.is_main:
            run_dir = self.run_dir.resolve()
            for folder in folders:
                if not Path(folder).resolve().is_relative_to(run_dir):
                    sweep_temporaries(folder)
        barrier()

    @functools.cached_property
    def execution(self) -> RunExecution:
        """How each use of a model runs in this run, resolved once (:meth:`RunExecution.resolve`)."""
        return RunExecution.resolve(self.cfg, self.device)


def amp_enabled(device: torch.device, requested: bool, amp_cpu: bool) -> bool:
    """The one AMP rule: bf16 where a section asks for it, on CUDA, or on the CPU with ``amp_cpu``
    when the CPU computes bf16 natively (elsewhere it is emulated, far slower than float32: see
    :func:`cpu_bf16_native`).

    A function of its own so that work outside a run directory (``weaktr pretrain``) decides alike.
    """
    if not requested:
        return False
    if device.type == "cuda":
        return True
    if not amp_cpu:
        return False
    if cpu_bf16_native():
        return True
    _warn_emulated_bf16()
    return False


# What makes a missing data set, by the kind of data the config is for; OUT is the folder the config
# expects. Commands the CLI accepts as they stand (tests parse them); upper-case words are the user's paths.
PREPARE_COMMANDS = {
    "voc": "weaktr prepare voc --root data/VOCdevkit/VOC2012 --out {out}",
    "coco": "weaktr prepare coco --annotations instances_train2014.json instances_val2014.json "
    "--images COCO_IMAGES --out {out}",
    "folder": "weaktr prepare folder --images IMAGES --labels LABELS.csv --out {out}",
}


def missing_dataset(cfg: RunConfig) -> InputError:
    """The error of a run whose ``data.dataset`` does not exist: the ``weaktr prepare`` command that
    makes it (VOC, COCO or a folder, as the data set's folder name suggests: the packaged configs
    expect data/voc and data/coco) and the override that points the run elsewhere, so that a first
    run without data says what to do next."""
    path = Path(cfg.data.dataset)
    out = path if path.suffix not in {".yaml", ".yml"} else path.parent
    kind = next((k for k in ("coco", "voc") if k in out.name.lower()), "folder")
    command = PREPARE_COMMANDS[kind].format(out=out.as_posix())
    return InputError(
        f"dataset description not found; make it with `{command}`, or point the run at a prepared "
        "data set with data.dataset=/path/to/dataset.yaml",
        path / "dataset.yaml" if out == path else path,
    )


def resolve_dataset(cfg: RunConfig, run_dir: Path) -> DatasetInfo:
    """The prepared data set of ``cfg.data``; ``demo`` is generated into the run's data folder first.

    A data set whose ``checked`` fingerprint does not match its files (or that has none: not made by
    ``weaktr prepare``) is checked once; the run keeps the passing fingerprint in ``data_check.json``.
    """
    if cfg.data.dataset == "demo":  # generated here, so valid by construction
        d = cfg.data.demo
        out = RunLayout(run_dir).demo_data
        return generate_demo(out, d.n_train, d.n_val, d.size, d.num_classes, d.seed, workers=2)
    described = Path(cfg.data.dataset)
    if not (described / "dataset.yaml" if described.is_dir() else described).is_file():
        raise missing_dataset(cfg)
    info = DatasetInfo.load(described)
    items = dataset_items(info)
    done = fingerprint(items, info.n_cls)
    stamp = RunLayout(run_dir).data_check
    if done in (info.checked, _stamped(stamp)):
        return info
    log.info(
        "data set %r: checking %d images (prepare did not check them as they are now)", info.name, len(items)
    )
    check_files(items, info.n_cls)
    write_json(stamp, {"dataset": str(Path(cfg.data.dataset).resolve()), "fingerprint": done})
    return info


def _stamped(stamp: Path) -> str | None:
    """The fingerprint a previous call of this run recorded, if any."""
    try:
        return str(json.loads(stamp.read_text())["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_dataset(run_dir: str | Path, dataset: str) -> DatasetInfo:
    """The prepared data set of a finished run (``data.dataset``), without generating anything.

    The built-in demo lives in the run's data folder; a relative path is tried from the current folder
    (where ``weaktr run`` was started), then from the run directory.
    """
    run_dir = Path(run_dir)
    candidates = [RunLayout(run_dir).demo_data] if dataset == "demo" else [Path(dataset), run_dir / dataset]
    for cand in candidates:
        if (cand / "dataset.yaml").is_file() if cand.is_dir() else cand.is_file():
            return DatasetInfo.load(cand)
    raise InputError("data set of the run not found", candidates[0])


def open_run(cfg: RunConfig, save: bool = True) -> RunContext:
    """Join torchrun (if launched by it), set threads, get the data, log to ``log.txt``, save the config.

    The main rank removes the temporaries a killed run left (:func:`weaktr.io.sweep_temporaries`) and
    gets the data set while the others wait, so a failing check leaves no run folder.
    """
    dist = init_distributed(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    setup_logging(None, is_main=dist.is_main)  # the console only, until the data set is known good
    swept = sweep_temporaries(run_dir) if dist.is_main else 0  # before any rank writes again
    dataset = resolve_dataset(cfg, run_dir) if dist.is_main else None
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir, is_main=dist.is_main)
    if swept:
        log.info("removed %d temporary file(s) that an interrupted run left in %s", swept, run_dir)
    if dist.is_main and save:
        save_config(cfg, RunLayout(run_dir).config)
    if dist.world > 1:
        torch.distributed.barrier()
        dataset = dataset or resolve_dataset(cfg, run_dir)
    assert dataset is not None
    ctx = RunContext(cfg=cfg, run_dir=run_dir, dataset=dataset, dist=dist)
    log.debug("execution: %s", ctx.execution)  # resolved here, once: its warnings precede any stage
    return ctx
