"""Which epoch a training phase keeps, and why: the record behind ``cam/selection.json`` and
``seg/selection.json``.

The record is saved with every training state too, so that a resumed run goes on choosing where
the killed one stopped. Both phases choose by one rule (:meth:`Selection.update`); each spells the
record in JSON as its files always have (phase 1: ``mode``, ``split``, ``miou`` and ``threshold``;
phase 2: ``select_checkpoint``, ``eval_split``, ``val_miou``), so that the files and training states
of earlier runs read back unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Score:
    """One evaluation of an epoch's model."""

    epoch: int  # 1-based
    miou: float
    threshold: float | None = None  # CAMs: the background threshold the mIoU was reached at


@dataclass
class Selection(ABC):
    """The kept epoch, the score that chose it and every evaluation so far."""

    criterion: str  # the phase's select_checkpoint: 'last' keeps every epoch, the others the best score
    split: str | None  # the split scored (None: none is)
    epoch: int = 0  # the kept epoch, 1-based (0: none yet)
    best: Score | None = None  # the kept epoch's score, when it was scored
    history: list[Score] = field(default_factory=list)

    def update(self, epoch: int, score: Score | None) -> bool:
        """Record ``epoch``'s score (None: not evaluated); True keeps the epoch.

        ``last`` keeps every epoch; otherwise an epoch is kept when its score beats the kept one
        (the first score always does; a NaN never beats one).
        """
        if score is not None:
            self.history.append(score)
        keep = self.criterion == "last" or (
            score is not None and (self.best is None or score.miou > self.best.miou)
        )
        if keep:
            self.epoch, self.best = epoch, score
        return keep

    @abstractmethod
    def score_json(self, score: Score) -> dict[str, Any]:
        """One evaluation as the history and the log's ``select`` records spell it."""

    @abstractmethod
    def to_json(self) -> dict[str, Any]:
        """The record as ``selection.json`` and the training state hold it."""

    @classmethod
    @abstractmethod
    def from_json(cls, data: Mapping[str, Any]) -> Selection:
        """Inverse of :meth:`to_json`."""

    @abstractmethod
    def done_fields(self) -> dict[str, Any]:
        """What the final ``done`` record of the log says of the choice."""


class CamSelection(Selection):
    """Phase 1: ``last``, or ``gt_miou`` (the CAMs' mIoU at the best swept background threshold)."""

    def score_json(self, score: Score) -> dict[str, Any]:
        return {"epoch": score.epoch, "miou": score.miou, "threshold": score.threshold}

    def to_json(self) -> dict[str, Any]:
        best = {} if self.best is None else {"miou": self.best.miou, "threshold": self.best.threshold}
        history = [self.score_json(s) for s in self.history]
        return {"mode": self.criterion, "split": self.split, "epoch": self.epoch, "history": history, **best}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CamSelection:
        history = [Score(h["epoch"], h["miou"], h["threshold"]) for h in data["history"]]
        best = Score(data["epoch"], data["miou"], data["threshold"]) if "miou" in data else None
        return cls(data["mode"], data["split"], data["epoch"], best, history)

    def done_fields(self) -> dict[str, Any]:
        return {"select_checkpoint": self.criterion}


class SegSelection(Selection):
    """Phase 2: ``last``, or ``gt_val`` (single-scale mIoU on the evaluation split)."""

    def score_json(self, score: Score) -> dict[str, Any]:
        return {"epoch": score.epoch, "val_miou": score.miou}

    def to_json(self) -> dict[str, Any]:
        return {
            "select_checkpoint": self.criterion,
            "eval_split": self.split,
            "epoch": self.epoch,
            "val_miou": self.val_miou,
            "history": [self.score_json(s) for s in self.history],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SegSelection:
        history = [Score(h["epoch"], h["val_miou"]) for h in data["history"]]
        best = None if data["val_miou"] is None else Score(data["epoch"], data["val_miou"])
        return cls(data["select_checkpoint"], data["eval_split"], data["epoch"], best, history)

    @property
    def val_miou(self) -> float | None:
        """The kept epoch's score (None: it was not evaluated)."""
        return None if self.best is None else self.best.miou

    def done_fields(self) -> dict[str, Any]:
        return {"val_miou": self.val_miou}
