"""The settings of ``weaktr pretrain``: architecture, data and recipe, with their defaults.

A module of its own without heavy imports, so that ``weaktr pretrain --help`` shows the defaults
without loading torch (``weaktr.stages.pretrain`` runs them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from weaktr.errors import InputError

POOLS = ("token", "avg")


@dataclass
class PretrainSettings:
    """The architecture, data and recipe of one pretraining run (all of it lands in the file's metadata)."""

    backbone: str = "vit_small_patch16_224"  # the timm layout (and normalisation); sizes below override it
    pool: str = "token"  # timm's global_pool of the classifier head: "token" (DeiT) or "avg"
    stem: str = "conv"
    img_size: int = 96
    patch_size: int = 8
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    drop_path: float = 0.0
    n_train: int = 28_000
    n_val: int = 1_400
    data_seed: int = 0
    seed: int = 0
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    crop_scale: tuple[float, float] = (0.6, 1.0)  # area fraction of the random zoom-in crop (objects 1)
    max_steps: int | None = None  # stop early (tests, timing); the schedule still spans all epochs
    # most objects per image: 1 = one object, cross entropy (label_smoothing, crop_scale); K > 1 = 1..K
    # objects of distinct classes, multi-hot labels, multilabel soft margin loss, flip-only augmentation
    objects: int = 1

    def __post_init__(self) -> None:
        if self.n_train < self.batch_size or self.n_val < 0 or self.epochs < 1:
            raise InputError(
                f"pretrain needs n_train >= batch_size, n_val >= 0 and epochs >= 1 "
                f"(got {self.n_train}, {self.n_val}, {self.epochs})"
            )
        if self.objects < 1:
            raise InputError(f"objects must be at least 1, not {self.objects}")
        if self.pool not in POOLS:
            raise InputError(f"pool must be one of {', '.join(POOLS)}, not {self.pool!r}")
        if self.embed_dim % self.num_heads:
            raise InputError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")

    def as_dict(self) -> dict[str, Any]:
        """Every setting, for the file's metadata; ``objects`` only when it is not 1, so one-object
        files keep the bytes they had before the setting existed."""
        d = dataclasses.asdict(self)
        if self.objects == 1:
            del d["objects"]
        return d

    def architecture(self) -> dict[str, Any]:
        """The sizes that rebuild this backbone (the cam_model / seg_model keys of a run config)."""
        keys = ("backbone", "stem", "img_size", "patch_size", "embed_dim", "depth", "num_heads")
        return {k: getattr(self, k) for k in keys}
