"""The epoch loop both training phases share: seeding, data order, resume, saving, logging, divergence.

A phase (``stages.train_cam``, ``stages.train_seg``) subclasses :class:`EpochTrainer` with its own
step, loss and checkpoint selection. What makes a run resumable lives here once:

* the global RNGs are reseeded from (seed, epoch, rank) at the start of every epoch (the model is
  built under epoch 0's seed), the sampler shuffles from (seed, epoch) and the DataLoader seeds its
  workers from (seed, epoch, rank), so a rerun after a kill continues from the last finished epoch
  bit-identically, on every rank, without per-rank RNG files;
* every epoch ends with the kept model (when the phase keeps this epoch), then the training state
  (weights, optimiser state, epoch, setup, selection), then ``selection.json``, each written
  atomically and in this order, so that a state never names a kept model that was not written;
* a state made with other settings is refused before anything is loaded, naming what changed;
* a loss that is no longer finite stops the run with one line naming the log; nothing of the
  diverged epoch is saved;
* the JSONL records are mirrored as TensorBoard scalars, and after each epoch's state is saved the
  phase may draw image grids (main rank, model in eval mode without gradients): every RNG is
  reseeded at the next epoch's start, so drawing cannot change training.
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from weaktr.cores import cap_workers
from weaktr.data.loader import ItemLoader
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


class EpochTrainer(ABC):
    """A phase's run around its step: resume, the epoch loop, saving, logging and divergence.

    A subclass sets ``model``, ``optimizer`` and ``dataset`` and implements :meth:`train_epoch`,
    :meth:`select`, :meth:`save_model` and :meth:`summary`; ``selection`` is its own record of the
    kept epoch (``epoch`` and ``history`` keys at least), saved with the state.
    """

    name: ClassVar[str]  # 'train-cam': progress bars and log lines
    section: ClassVar[str]  # 'cam_train': the config section hints name
    drop_last: ClassVar[bool] = False
    find_unused_parameters: ClassVar[bool] = False

    model: nn.Module
    optimizer: torch.optim.Optimizer
    dataset: Dataset
    ddp: nn.Module  # the model, DDP-wrapped under torchrun: what train_epoch steps (set by fit)

    def __init__(self, ctx: RunContext, files: PhaseFiles, selection: dict[str, Any]) -> None:
        self.ctx, self.files, self.selection = ctx, files, selection
        self.cfg: TrainSection = getattr(ctx.cfg, self.section)
        self.setup: dict[str, Any] = {}
        self.start = 0
        self.jlog = JsonlLogger(files.log, enabled=False)  # the real ones are opened by fit
        self.board = Board(ctx.layout.tensorboard, enabled=False)

    # -- what a phase supplies --------------------------------------------------------------------
    @abstractmethod
    def train_epoch(self, epoch: int, loader: DataLoader) -> dict[str, Any]:
        """One pass over ``loader``; returns the fields of the epoch's log record (mean losses, ...)."""

    @abstractmethod
    def select(self, epoch: int, record: dict[str, Any]) -> bool:
        """Evaluate if due (adding scores to ``record``), update ``selection``; True keeps this epoch."""

    @abstractmethod
    def save_model(self, path: Path) -> None:
        """Write the kept model (main rank only)."""

    @abstractmethod
    def summary(self, record: dict[str, Any]) -> str:
        """The epoch's numbers for the human log line."""

    def done_fields(self) -> dict[str, Any]:
        """Extra fields of the final ``done`` record."""
        return {}

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
        self.start, self.selection = saved["epoch"], saved["extra"]["selection"]
        log.info("%s: resuming after epoch %d of %d from %s", self.name, self.start, self.cfg.epochs, path)
        return self.start >= self.cfg.epochs and self.files.model.is_file()

    # -- the run ----------------------------------------------------------------------------------
    def diverged(self, loss: float, epoch: int, it: int) -> NoReturn:
        """Stop on a non-finite loss at iteration ``it`` (1-based) of ``epoch`` (0-based)."""
        self.jlog.log(event="diverged", epoch=epoch + 1, iter_of_epoch=it, loss=loss)
        amp = f" or turn off {self.section}.amp" if self.ctx.amp(self.cfg.amp) else ""
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

    def fit(self, **start_fields: Any) -> Path:
        """Train the epochs left after :meth:`resume`; returns the kept model's path."""
        files, main = self.files, self.ctx.dist.is_main
        self.ddp = wrap_ddp(self.model, find_unused_parameters=self.find_unused_parameters)
        board = main and self.ctx.cfg.tensorboard
        with (
            JsonlLogger(files.log, enabled=main) as self.jlog,
            Board(self.ctx.layout.tensorboard, enabled=board) as self.board,
        ):
            self.jlog.log(event="resume" if self.start else "start", epoch=self.start, **start_fields)
            for epoch in range(self.start, self.cfg.epochs):
                tic = time.perf_counter()
                self.seed_epoch(epoch)
                loader = self.loader(epoch)
                record: dict[str, Any] = {
                    "event": "epoch",
                    "epoch": epoch + 1,
                    **self.train_epoch(epoch, loader),
                }
                evaluated = len(self.selection["history"])
                keep = self.select(epoch, record)
                if main:
                    if keep:
                        self.save_model(files.model)
                    extra = {"setup": self.setup, "selection": self.selection}
                    save_training_state(
                        files.state,
                        self.model,
                        self.optimizer,
                        epoch + 1,
                        (epoch + 1) * len(loader),
                        extra=extra,
                    )
                    write_json(files.selection, self.selection)
                record["seconds"] = time.perf_counter() - tic
                self.jlog.log(record)
                self._scalars("epoch", record, epoch + 1)
                if len(self.selection["history"]) > evaluated:
                    chosen = {**self.selection["history"][-1], "kept_epoch": self.selection["epoch"]}
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
            self.jlog.log(event="done", kept_epoch=self.selection["epoch"], **self.done_fields())
        return files.model
