"""The epoch loop both training phases share: seeding, data order, resume, saving, logging, divergence.

A phase (``stages.train_cam``, ``stages.train_seg``) subclasses :class:`EpochTrainer` with its own
step, loss and evaluation; which epoch is kept is decided by its
:class:`~weaktr.engine.selection.Selection`. What makes a run resumable lives here once:

* the global RNGs are reseeded from (seed, epoch, rank) at the start of every epoch (the model is
  built under epoch 0's seed), the sampler shuffles from (seed, epoch) and the DataLoader seeds its
  workers from (seed, epoch, rank), so a rerun after a kill continues from the last finished epoch
  bit-identically, on every rank, without per-rank RNG files;
* every epoch ends with the kept model (when the phase keeps this epoch), then the training state
  (weights, optimiser state, epoch, setup, selection), then ``selection.json``, each written
  atomically and in this order, so that a state never names a kept model that was not written;
* a state made with other settings is refused before anything is loaded, naming what changed;
* a loss that is no longer finite stops the run with one line naming the log
  (:meth:`EpochTrainer.check_losses`, the one divergence rule of both phases); nothing of the
  diverged epoch is saved;
* the JSONL records are mirrored as TensorBoard scalars, and after each epoch's state is saved the
  phase may draw image grids (main rank, model in eval mode without gradients): every RNG is
  reseeded at the next epoch's start, so drawing cannot change training.
"""

from __future__ import annotations

import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from weaktr.cores import cap_workers
from weaktr.data.loader import ItemLoader
from weaktr.engine.selection import Score, Selection
from weaktr.engine.state import load_training_state, read_state_extra, save_training_state
from weaktr.errors import InputError
from weaktr.io import write_json
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import barrier, per_rank_batch, seed_everything, wrap_ddp
from weaktr.runtime.logging import JsonlLogger, format_seconds
from weaktr.runtime.tensorboard import Board

log = logging.getLogger("weaktr")
EPOCH_SEED_STRIDE = 1000  # epoch e of rank r seeds with seed + 1000·e + r (epoch 0: the authors' seed + r)
GRID_IMAGES = 4  # images per TensorBoard grid: the first of a split, the same at every evaluation
_STEP_KEYS = ("event", "epoch", "iter", "step")  # JSONL fields that place a record, not measure it
M = TypeVar("M", bound=nn.Module)


class TrainSection(Protocol):
    """What the skeleton reads of a phase's config section (``cam_train``, ``seg_train``)."""

    epochs: int
    batch_size: int  # the total over all ranks
    seed: int
    amp: bool
    num_workers: int


@dataclass(frozen=True)
class PhaseFiles:
    """Where one phase keeps its artefacts (paths from :class:`weaktr.runtime.layout.RunLayout`)."""

    model: Path
    state: Path
    log: Path
    selection: Path


@dataclass(frozen=True)
class RunSettings:
    """What the ``start`` / ``resume`` record of a phase's log names; a phase adds its own fields."""

    epochs: int
    batch_size: int  # the total over all ranks
    world: int
    lr: float  # the base lr, as the phase applies it


class EpochTrainer(ABC, Generic[M]):
    """A phase's run around its step: resume, the epoch loop, saving, logging and divergence.

    A subclass sets ``model`` (the phase's network, the one name it has), ``optimizer`` and
    ``dataset`` and implements :meth:`train_epoch`, :meth:`evaluate`, :meth:`save_model` and
    :meth:`summary`; ``selection`` keeps the record of the kept epoch, saved with the state.
    """

    name: ClassVar[str]  # 'train-cam': progress bars and log lines
    section: ClassVar[str]  # 'cam_train': the config section hints name
    drop_last: ClassVar[bool] = False
    find_unused_parameters: ClassVar[bool] = False

    model: M
    optimizer: torch.optim.Optimizer
    dataset: Dataset

    def __init__(self, ctx: RunContext, files: PhaseFiles, selection: Selection) -> None:
        self.ctx, self.files, self.selection = ctx, files, selection
        self.cfg: TrainSection = getattr(ctx.cfg, self.section)
        self.setup: dict[str, Any] = {}
        self.start = 0
        self.jlog = JsonlLogger(files.log, enabled=False)  # the real ones are opened by fit
        self.board = Board(ctx.layout.tensorboard, enabled=False)

    # -- what a phase supplies --------------------------------------------------------------------
    @abstractmethod
    def train_epoch(self, epoch: int, loader: DataLoader, ddp: nn.Module) -> dict[str, Any]:
        """One pass over ``loader``, stepping ``ddp``; returns the fields of the epoch's log record.

        ``ddp`` is ``model`` as DDP wraps it under torchrun (the model itself in one process): the
        forward and backward passes must go through it for the gradients to be averaged.
        """

    @abstractmethod
    def evaluate(self, epoch: int, record: dict[str, Any]) -> Score | None:
        """Score ``epoch``'s model if due (adding the score to ``record``); None when not evaluated."""

    @abstractmethod
    def save_model(self, path: Path) -> None:
        """Write the kept model (main rank only)."""

    @abstractmethod
    def summary(self, record: dict[str, Any]) -> str:
        """The epoch's numbers for the human log line."""

    def images(self, epoch: int, record: dict[str, Any]) -> dict[str, np.ndarray]:
        """TensorBoard image grids (RGB uint8) of this epoch by tag; called only when they are written."""
        return {}

    # -- seeds, data, resume ----------------------------------------------------------------------
    def epoch_seed(self, epoch: int) -> int:
        return self.cfg.seed + EPOCH_SEED_STRIDE * epoch

    def seed_epoch(self, epoch: int) -> None:
        """Reseed python, numpy and torch for ``epoch`` on this rank (epoch 0 also builds the model)."""
        seed_everything(self.epoch_seed(epoch), self.ctx.dist.rank)

    def loader(self, epoch: int) -> DataLoader:
        """This rank's shuffled shard of ``dataset`` for ``epoch``."""
        rank, world = self.ctx.dist.rank, self.ctx.dist.world
        sampler = DistributedSampler(
            self.dataset,
            num_replicas=world,
            rank=rank,
            shuffle=True,
            seed=self.cfg.seed,
            drop_last=self.drop_last,
        )
        sampler.set_epoch(epoch)
        loader = ItemLoader(  # a failing image reaches the CLI as one line naming it
            self.dataset,
            batch_size=per_rank_batch(self.cfg.batch_size, world),
            sampler=sampler,
            num_workers=cap_workers(self.cfg.num_workers, f"{self.section}.num_workers"),
            drop_last=self.drop_last,
            pin_memory=self.ctx.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.epoch_seed(epoch) + rank),
        )
        if len(loader) == 0:
            raise InputError(
                f"split {self.ctx.cfg.data.train_split!r} has {len(self.dataset)} images, fewer than one "
                f"batch of {loader.batch_size} per process; lower {self.section}.batch_size"
            )
        return loader

    def check_setup(self, setup: dict[str, Any]) -> None:
        """Keep what a resumed run must share with this one; refuse a saved state made otherwise.

        Read from the state's header, so nothing is loaded (or written) before the refusal.
        """
        self.setup = json.loads(json.dumps(setup))  # as the state's JSON gives it back (tuples → lists)
        path = self.files.state
        if not path.is_file():
            return
        saved = read_state_extra(path).get("setup") or {}
        changed = sorted(k for k in self.setup.keys() | saved.keys() if saved.get(k) != self.setup.get(k))
        if changed:
            raise InputError(
                f"training state was made with other settings (changed: {', '.join(changed)}); "
                "use another run_dir or delete the state to start over",
                path,
            )

    def resume(self) -> bool:
        """Load the state of the last finished epoch, if any; True when nothing is left to train."""
        path = self.files.state
        if not path.is_file():
            return False
        saved = load_training_state(path, self.model, self.optimizer, restore_rng=False)
        self.start = saved["epoch"]
        self.selection = type(self.selection).from_json(saved["extra"]["selection"])
        log.info("%s: resuming after epoch %d of %d from %s", self.name, self.start, self.cfg.epochs, path)
        return self.start >= self.cfg.epochs and self.files.model.is_file()

    # -- the run ----------------------------------------------------------------------------------
    def check_losses(self, losses: Sequence[float], epoch: int, first_iter: int) -> None:
        """Both phases' divergence rule: stop the run at the first loss that is not finite.

        ``losses`` are the losses of iterations ``first_iter``, ``first_iter + 1``, ... (1-based) of
        ``epoch`` (0-based), passed as the phase reads them off the device (every step, or a log
        window at a time so that steps do not wait for the device). The log gets a ``diverged``
        record and the error names it; the epoch ends in the error, before anything of it is saved.
        """
        bad = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), None)
        if bad is None:
            return
        loss, it = losses[bad], first_iter + bad
        self.jlog.log(event="diverged", epoch=epoch + 1, iter_of_epoch=it, loss=loss)
        amp = f" or turn off {self.section}.amp" if getattr(self.ctx.execution, self.section).amp else ""
        raise InputError(
            f"training diverged: the loss is {loss} at iteration {it} of epoch {epoch + 1}; "
            f"lower {self.section}.lr{amp}",
            self.files.log,
        )

    def log_iter(self, record: dict[str, Any], step: int) -> None:
        """One ``iter`` record of the JSONL log, and its numbers as scalars at global iteration ``step``."""
        self.jlog.log(event="iter", **record)
        self._scalars("iter", record, step)

    def _scalars(self, kind: str, record: dict[str, Any], step: int) -> None:
        self.board.scalars(
            f"{self.name}/{kind}", {k: v for k, v in record.items() if k not in _STEP_KEYS}, step
        )

    def _draw(self, epoch: int, record: dict[str, Any]) -> None:
        """The phase's image grids of this epoch (main rank; train mode restored afterwards)."""
        if not self.board.active:
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for tag, image in self.images(epoch, record).items():
                    self.board.image(f"{self.name}/{tag}", image, epoch + 1)
        finally:
            self.model.train(was_training)

    def fit(self, settings: RunSettings) -> Path:
        """Train the epochs left after :meth:`resume`; returns the kept model's path.

        ``settings`` go into the log's ``start`` (or ``resume``) record.
        """
        files, main, selection = self.files, self.ctx.dist.is_main, self.selection
        ddp = wrap_ddp(self.model, find_unused_parameters=self.find_unused_parameters)
        board = main and self.ctx.cfg.tensorboard
        with (
            JsonlLogger(files.log, enabled=main) as self.jlog,
            Board(self.ctx.layout.tensorboard, enabled=board) as self.board,
        ):
            start = asdict(settings)
            self.jlog.log(event="resume" if self.start else "start", epoch=self.start, **start)
            for epoch in range(self.start, self.cfg.epochs):
                tic = time.perf_counter()
                self.seed_epoch(epoch)
                loader = self.loader(epoch)
                record: dict[str, Any] = {
                    "event": "epoch",
                    "epoch": epoch + 1,
                    **self.train_epoch(epoch, loader, ddp),
                }
                score = self.evaluate(epoch, record)
                keep = selection.update(epoch + 1, score)
                if main:
                    if keep:
                        self.save_model(files.model)
                    extra = {"setup": self.setup, "selection": selection.to_json()}
                    save_training_state(
                        files.state,
                        self.model,
                        self.optimizer,
                        epoch + 1,
                        (epoch + 1) * len(loader),
                        extra=extra,
                    )
                    write_json(files.selection, selection.to_json())
                record["seconds"] = time.perf_counter() - tic
                self.jlog.log(record)
                self._scalars("epoch", record, epoch + 1)
                if score is not None:
                    chosen = {**selection.score_json(score), "kept_epoch": selection.epoch}
                    self.jlog.log(event="select", **chosen)
                    self._scalars("select", chosen, epoch + 1)
                self._draw(epoch, record)
                log.info(
                    "%s epoch %d/%d: %s, %s",
                    self.name,
                    epoch + 1,
                    self.cfg.epochs,
                    self.summary(record),
                    format_seconds(record["seconds"]),
                )
                barrier()
            self.jlog.log(event="done", kept_epoch=selection.epoch, **selection.done_fields())
        return files.model
