"""TensorBoard event files beside the JSONL log, for watching a run (``tensorboard --logdir RUN_DIR``).

The JSONL log stays the record (the report reads it); this mirrors its numbers as scalars and adds a
few image grids. :class:`Board` is a no-op when switched off (``tensorboard: false``), on every rank
but the main one, or when the optional ``tensorboard`` package (the ``tb`` extra) is not installed,
so that training never depends on it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import make_grid

from weaktr.data.palette import voc_palette

log = logging.getLogger("weaktr")


class Board:
    """A ``SummaryWriter`` into ``log_dir`` when ``enabled`` and tensorboard is installed; else nothing."""

    def __init__(self, log_dir: str | Path, enabled: bool = True) -> None:
        self._writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the optional 'tb' extra is not installed
            log.info("tensorboard is not installed: no event files (pip install 'weaktr[tb]')")
            return
        self._writer = SummaryWriter(log_dir=str(log_dir))

    @property
    def active(self) -> bool:
        """Whether anything is written: callers skip drawing images when not."""
        return self._writer is not None

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        """Every number of ``values`` as ``prefix/key`` at ``step`` (flags, text and None are skipped)."""
        if self._writer is None:
            return
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """One RGB uint8 (H, W, 3) image."""
        if self._writer is not None:
            self._writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def label_panel(labels: np.ndarray) -> np.ndarray:
    """A label map (H, W) in the VOC colours (255 = ignore in its near-white)."""
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return palette[labels]


def heat_panel(heat: np.ndarray) -> np.ndarray:
    """A [0, 1] map (H, W) as a grey image."""
    return np.repeat((np.clip(np.nan_to_num(heat), 0.0, 1.0) * 255).astype(np.uint8)[..., None], 3, axis=2)


def grid(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Rows of RGB uint8 panels as one image: panels padded to the largest, short rows with blanks."""
    h = max(p.shape[0] for row in rows for p in row)
    w = max(p.shape[1] for row in rows for p in row)
    cols = max(len(row) for row in rows)
    tiles = []
    for row in rows:
        for k in range(cols):
            tile = torch.zeros(3, h, w, dtype=torch.uint8)
            if k < len(row):
                p = torch.from_numpy(np.ascontiguousarray(row[k])).permute(2, 0, 1)
                tile[:, : p.shape[1], : p.shape[2]] = p
            tiles.append(tile)
    return make_grid(tiles, nrow=cols, padding=2, pad_value=255).permute(1, 2, 0).numpy()
