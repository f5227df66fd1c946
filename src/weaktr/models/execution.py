"""How a model runs: one execution policy, resolved where a run or a model is opened, applied by the model.

The policy says where the model runs, in which dtypes its backbone and its heads compute, and whether
CPU inference may use the self-checked fused blocks (:mod:`weaktr.models.cpu_blocks`). It is resolved
once (``runtime.context.open_run`` for a run, ``WeakTr.load`` for the API) and handed to a model by
its ``prepare_inference``, or entered by a training loop around the forward (:meth:`autocast`); no
function below takes precision or the fast path as loose flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

ENV_SWITCH = "WEAKTR_FUSED_CPU"  # "0" turns the fused CPU blocks off wherever a policy is made
BF16, FP32 = torch.bfloat16, torch.float32


@dataclass(frozen=True)
class ExecutionPolicy:
    """Device, backbone and head dtypes (float32 or bf16) and the fused CPU path of one use of a model.

    A bf16 backbone with float32 heads keeps the maps whose rounding moves seeds or pixels (CAM heads,
    the segmenter's decoder) exact at about the speed of bf16 (docs/benchmarks.md); bf16 heads mean
    the whole forward runs under autocast, as training does.
    """

    device: torch.device
    backbone_dtype: torch.dtype = FP32
    head_dtype: torch.dtype = FP32
    fused_cpu: bool = True

    def __post_init__(self) -> None:
        bad = {self.backbone_dtype, self.head_dtype} - {FP32, BF16}
        if bad:
            raise ValueError(f"a policy computes in float32 or bfloat16, not {sorted(map(str, bad))}")
        # the environment switch is read here, once per policy, never again below
        fused = self.fused_cpu and os.environ.get(ENV_SWITCH, "1").strip() != "0"
        object.__setattr__(self, "fused_cpu", fused)

    @classmethod
    def training(cls, device: torch.device, bf16: bool) -> ExecutionPolicy:
        """A training step: the whole forward under bf16 autocast when ``bf16`` (losses outside it)."""
        dtype = BF16 if bf16 else FP32
        return cls(device, dtype, dtype, fused_cpu=False)

    @classmethod
    def cam_inference(cls, device: torch.device, bf16: bool, fused_cpu: bool = True) -> ExecutionPolicy:
        """CAM generation: bf16 backbone when ``bf16``, float32 heads always (the CAMs feed seeds)."""
        return cls(device, BF16 if bf16 else FP32, FP32, fused_cpu)

    @classmethod
    def seg_inference(cls, device: torch.device, bf16: bool, fused_cpu: bool = True) -> ExecutionPolicy:
        """Segmentation inference: with ``bf16`` the CPU runs bf16 encoder blocks and a float32
        decoder (bf16 class scores flip pixels there), CUDA the whole inference under autocast."""
        head = BF16 if bf16 and device.type == "cuda" else FP32
        return cls(device, BF16 if bf16 else FP32, head, fused_cpu)

    @property
    def amp(self) -> bool:
        """Whether anything runs in bf16."""
        return BF16 in (self.backbone_dtype, self.head_dtype)

    @property
    def fused(self) -> bool:
        """Whether the fused CPU blocks are wanted (they still step aside where their self-check failed)."""
        return self.fused_cpu and self.device.type == "cpu"

    def autocast(self, dtype: torch.dtype) -> torch.autocast:
        """bf16 autocast on this device for ``dtype`` bf16; for float32 an autocast turned off, so an
        enclosing one cannot lower it."""
        return torch.autocast(self.device.type, dtype=BF16, enabled=dtype == BF16)
