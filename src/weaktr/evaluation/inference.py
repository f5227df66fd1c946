"""Sliding-window, multi-scale + flip segmentation inference with the two-layer ensemble (spec §2.5).

The authors' order matters for parity: window outputs are averaged on the *logits* (count map), resized
to the image size and flipped back, and only then soft-maxed; the probabilities of all scale/flip
variants are averaged; the final score is ``w·P1 + P2`` where P1 comes from decoder block 1 (golden O7).
Each window runs the encoder once for both outputs, and a scale's windows (with its flipped copy) are
batched through the model in chunks. Every setting travels in one :class:`InferenceSettings`, made from
the config by :meth:`InferenceSettings.from_config`. How the network computes (device, dtypes, the fused
CPU blocks) is its own execution policy, given to it once where it was loaded
(:meth:`~weaktr.models.segmenter.Segmenter.prepare_inference`); these functions only enter the autocast
it asks for (``precision``). The network is anything with the :class:`SegNet` attributes: a PyTorch
:class:`~weaktr.models.segmenter.Segmenter`, or an onnxruntime session standing in for one
(:class:`~weaktr.evaluation.onnx_backend.OrtSegmenter`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weaktr.config import PredictConfig
from weaktr.errors import InputError
from weaktr.models.timm_factory import normalise

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass(frozen=True)
class InferenceSettings:
    """How a segmenter is run over an image; the defaults are the authors' VOC test (spec §2.5).

    ``scales`` are ratios of ``base_size``, the short side at ratio 1 (None keeps the image's own
    size); ``window``/``stride`` the sliding window; ``window_batch`` windows go through the model
    at once; ``ensemble_weight`` weighs the decoder-layer-1 output (0 or None: P2 alone).
    """

    scales: tuple[float, ...] = MS_RATIOS
    flip: bool = True
    window: int = 480
    stride: int = 320
    base_size: int | None = 520
    window_batch: int = PredictConfig.window_batch  # the one default: the API's is the run's
    ensemble_weight: float | None = 0.8

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(r) for r in self.scales))
        bad = [
            f"{name} must be > 0 (got {value})"
            for name, value in (
                ("window", self.window),
                ("stride", self.stride),
                ("window_batch", self.window_batch),
            )
            if value <= 0
        ]
        if not self.scales or min(self.scales) <= 0:
            bad.append(f"scales must be positive ratios (got {list(self.scales)})")
        if bad:
            raise InputError(f"inference settings: {'; '.join(bad)}")

    @classmethod
    def from_config(cls, p: PredictConfig) -> InferenceSettings:
        """The settings of a config's ``predict`` section (its ``amp`` and ``fused_cpu`` go into the
        run's execution policy instead)."""
        return cls(
            scales=tuple(p.scales),
            flip=p.flip,
            window=p.window,
            stride=p.stride,
            base_size=p.base_size,
            window_batch=p.window_batch,
            ensemble_weight=p.ensemble_weight,
        )


DEFAULT_SETTINGS = InferenceSettings()


class SegNet(Protocol):
    """What the inference code asks of a network (the backend interface)."""

    patch_size: int
    mean: Sequence[float]
    std: Sequence[float]

    def forward_masks(self, x: torch.Tensor, return_layer1: bool = False) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised windows -> [final] or [final, layer-1] masks on the patch grid."""
        ...

    def precision(self) -> AbstractContextManager[Any]:
        """The autocast the network's inference runs in (entered around a whole image or loop)."""
        ...


def _device_of(net: nn.Module | SegNet) -> torch.device:
    """Where a network's inputs go: a module's parameters' device; other backends take CPU tensors."""
    return next(net.parameters()).device if isinstance(net, nn.Module) else torch.device("cpu")


def window_anchors(size: int, window: int, stride: int) -> list[int]:
    """Window starts {0, stride, ...} below size - window, plus size - window (one window if it fits)."""
    if size <= window:
        return [0]
    return [a for a in range(0, size, stride) if a < size - window] + [size - window]


def scaled_size(h: int, w: int, ratio: float, base_size: int | None) -> tuple[int, int]:
    """mmseg's keep-ratio resize to img_scale (8·base·r, base·r); with base_size None just scale by r."""
    f = ratio if base_size is None else min(8 * base_size * ratio / max(h, w), base_size * ratio / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def upscaled_size(h: int, w: int, window: int) -> tuple[int, int]:
    """The authors' rule: a short side below the window is upsampled to the window, keeping the ratio."""
    if min(h, w) >= window:
        return h, w
    if h < w:
        return window, int(w / h * window)
    return int(h / w * window), window


def to_input(
    image: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device
) -> torch.Tensor:
    """uint8 H×W×3 (numpy or tensor) -> normalised (1, 3, H, W); a float (3, H, W) passes as normalised."""
    if image.dtype == (np.uint8 if isinstance(image, np.ndarray) else torch.uint8):
        t = normalise(image, mean, std, device)
    else:
        t = torch.as_tensor(image).to(device=device, dtype=torch.float32)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[:2] != (1, 3):
        raise ValueError(f"expected one 3-channel image, got shape {tuple(t.shape)}")
    return t


@contextmanager
def _eval_mode(model: nn.Module | SegNet) -> Iterator[None]:
    """Run in eval mode without grad, restoring the caller's mode (training loops evaluate mid-epoch)."""
    if not isinstance(model, nn.Module):
        with torch.no_grad():
            yield
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def resize_matrix(out_size: int, in_size: int, device: torch.device | None = None) -> torch.Tensor:
    """(out, in) matrix M with ``M @ v`` = PyTorch's 1-D bilinear resize of v (align_corners False).

    Built by resizing the identity, so it follows ``F.interpolate``'s own index rule exactly; 2-D
    bilinear resizing is separable into one such matrix per axis.
    """
    eye = torch.eye(in_size, device=device)
    return F.interpolate(eye[None], size=out_size, mode="linear", align_corners=False)[0].T


def _axis_maps(
    size: int, out_size: int, window: int, stride: int, grid: int, patch: int, device: torch.device
) -> dict[int, torch.Tensor]:
    """Per window anchor on one axis, the (out_size, grid) map from a window's patch-grid output to the
    final image axis: upsample to the window, place at the anchor, divide by the window count, crop the
    padding, resize to ``out_size``. The composition of these linear steps is what the authors compute
    pixel by pixel; as a matrix it costs a few small matmuls per window instead of full-size tensors.
    """
    padded = max(size, window)
    anchors = window_anchors(padded, window, stride)
    count = torch.zeros(padded, device=device)
    for a in anchors:
        count[a : a + window] += 1
    scaled = resize_matrix(out_size, size, device) / count[:size]
    up = resize_matrix(grid * patch, grid, device)[:window]
    return {a: scaled[:, a : min(a + window, size)] @ up[: min(a + window, size) - a] for a in anchors}


def sliding_window_logits(
    model: nn.Module | SegNet,
    images: torch.Tensor,
    settings: InferenceSettings = DEFAULT_SETTINGS,
    layer1: bool = False,
    out_size: tuple[int, int] | None = None,
) -> list[torch.Tensor]:
    """(N, 3, H, W) same-size images -> per output, (N, C, *out_size) logits averaged over covering windows.

    Images smaller than the window are zero-padded to it and the logits cropped back; ``out_size``
    (default: the images' size) resizes the averaged logits bilinearly. The model gives each window's
    masks on its patch grid (``forward_masks``); upsampling, averaging and resizing are folded into
    one matrix per window anchor and axis (:func:`_axis_maps`), so no full-size window logits exist.
    """
    window, stride, window_batch = settings.window, settings.stride, settings.window_batch
    N, _, H, W = images.shape
    out_h, out_w = out_size or (H, W)
    x = F.pad(images, (0, max(0, window - W), 0, max(0, window - H)))
    patch = int(model.patch_size)
    grid = -(-window // patch)
    rows = _axis_maps(H, out_h, window, stride, grid, patch, x.device)
    cols = _axis_maps(W, out_w, window, stride, grid, patch, x.device)
    jobs = [(n, a, b) for n in range(N) for a in rows for b in cols]
    tiles: list[list[torch.Tensor]] = []  # per output, each job's (C, grid, grid) masks in job order
    with model.precision():
        for i in range(0, len(jobs), window_batch):
            chunk = jobs[i : i + window_batch]
            crops = torch.stack([x[n, :, a : a + window, b : b + window] for n, a, b in chunk])
            outs = model.forward_masks(crops, return_layer1=layer1)
            tiles = tiles or [[] for _ in outs]
            for acc, masks in zip(tiles, outs, strict=True):
                acc.extend(masks.float().unbind(0))
    # Σ over windows of rows[a] · M_ab · cols[b]ᵀ = [rows[a]…] · [M_ab tiled] · [cols[b]…]ᵀ: two matmuls
    # per image whose inner dimensions span all windows, instead of a small one per window
    left = torch.cat(list(rows.values()), dim=1)  # (out_h, n_rows·grid)
    right = torch.cat(list(cols.values()), dim=1).T  # (n_cols·grid, out_w)
    per_image, n_cols = len(rows) * len(cols), len(cols)
    sums = []
    for acc in tiles:
        images_out = []
        for n in range(N):
            own = acc[n * per_image : (n + 1) * per_image]
            tiled = torch.cat(
                [torch.cat(own[r * n_cols : (r + 1) * n_cols], dim=-1) for r in range(len(rows))], dim=-2
            )
            images_out.append(left @ (tiled @ right))
        sums.append(torch.stack(images_out))
    return sums


def _variant_inputs(
    x: torch.Tensor, ratio: float, base_size: int | None, window: int, flip: bool
) -> torch.Tensor:
    """One scale of a (1, 3, H, W) image, upscaled to the window if small, with its flipped copy stacked."""
    H, W = x.shape[-2:]
    size = scaled_size(H, W, ratio, base_size)
    if size != (H, W):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    up = upscaled_size(*size, window)
    if up != size:
        x = F.interpolate(x, size=up, mode="bilinear", align_corners=False)
    return torch.cat([x, x.flip(-1)]) if flip else x


def multiscale_probs(
    model: nn.Module | SegNet,
    image: np.ndarray | torch.Tensor,
    settings: InferenceSettings = DEFAULT_SETTINGS,
    layer1: bool = True,
    device: torch.device | None = None,
) -> list[torch.Tensor]:
    """[P2] or [P2, P1]: softmax probabilities (n_cls, H, W) averaged over the scale/flip variants.

    A uint8 image is normalised with the model's ``mean``/``std``; a float one is taken as normalised.
    """
    device = device or _device_of(model)
    x = to_input(image, model.mean, model.std, device)
    H, W = x.shape[-2:]
    sums: list[torch.Tensor] = []
    n_variants = 0
    with _eval_mode(model), model.precision():
        for ratio in settings.scales:
            batch = _variant_inputs(x, ratio, settings.base_size, settings.window, settings.flip)
            outs = sliding_window_logits(model, batch, settings, layer1, (H, W))
            for i, logits in enumerate(outs):
                if settings.flip:
                    logits = torch.cat([logits[:1], logits[1:].flip(-1)])
                p = logits.softmax(dim=1).sum(0)
                if len(sums) <= i:
                    sums.append(p)
                else:
                    sums[i] += p
            n_variants += batch.shape[0]
    return [s / n_variants for s in sums]


def predict_probs(
    model: nn.Module | SegNet,
    image: np.ndarray | torch.Tensor,
    settings: InferenceSettings = DEFAULT_SETTINGS,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Multi-scale/flip sliding-window score (n_cls, H, W) float32 on ``device``.

    The score is ``ensemble_weight·P1 + P2`` (the authors' default ``multi`` test), or P2 alone when
    the weight is None or 0; see :func:`multiscale_probs`.
    """
    weight = settings.ensemble_weight
    probs = multiscale_probs(model, image, settings, bool(weight), device)
    return probs[0] + weight * probs[1] if weight else probs[0]


def predict_logits(
    model: nn.Module | SegNet,
    image: np.ndarray | torch.Tensor,
    settings: InferenceSettings = DEFAULT_SETTINGS,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Single-scale, no-flip window-averaged logits (n_cls, H, W) at image size: the per-epoch evaluation.

    Only the window, stride, base size and window batch of ``settings`` apply.
    """
    device = device or _device_of(model)
    x = to_input(image, model.mean, model.std, device)
    H, W = x.shape[-2:]
    with _eval_mode(model), model.precision():
        batch = _variant_inputs(x, 1.0, settings.base_size, settings.window, flip=False)
        (logits,) = sliding_window_logits(model, batch, settings, False, (H, W))
    return logits[0]
