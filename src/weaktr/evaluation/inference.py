"""Sliding-window, multi-scale + flip segmentation inference with the two-layer ensemble (spec §2.5).

The authors' order matters for parity: window outputs are averaged on the *logits* (count map), resized
to the image size and flipped back, and only then soft-maxed; the probabilities of all scale/flip
variants are averaged; the final score is ``w·P1 + P2`` where P1 comes from decoder block 1 (golden O7).
Each window runs the encoder once for both outputs, and a scale's windows (with its flipped copy) are
batched through the model in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


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
    t = torch.as_tensor(image)
    if t.dtype == torch.uint8:
        if t.ndim != 3 or t.shape[-1] != 3:
            raise ValueError(f"uint8 images must be H×W×3, got shape {tuple(t.shape)}")
        t = t.to(device).permute(2, 0, 1).float().div(255.0)
        m = torch.tensor(mean, device=device).view(3, 1, 1)
        s = torch.tensor(std, device=device).view(3, 1, 1)
        t = (t - m) / s
    else:
        t = t.to(device=device, dtype=torch.float32)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[:2] != (1, 3):
        raise ValueError(f"expected one 3-channel image, got shape {tuple(t.shape)}")
    return t


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode without grad, restoring the caller's mode (training loops evaluate mid-epoch)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _run_windows(
    model: nn.Module, crops: torch.Tensor, layer1: bool, window_batch: int, amp: bool
) -> list[torch.Tensor]:
    """Model outputs for (K, 3, win, win) crops in chunks: [final] or [final, layer1] logits, float32."""
    outs: list[list[torch.Tensor]] = [[], []]
    with torch.autocast(crops.device.type, dtype=torch.bfloat16, enabled=amp):
        for i in range(0, crops.shape[0], window_batch):
            y = model(crops[i : i + window_batch], return_layer1=layer1)
            ys = [y.logits, y.logits_layer1] if layer1 else [y]
            for acc, t in zip(outs, ys, strict=False):
                acc.append(t.float())
    return [torch.cat(acc) for acc in outs if acc]


def sliding_window_logits(
    model: nn.Module,
    images: torch.Tensor,
    window: int = 480,
    stride: int = 320,
    layer1: bool = False,
    window_batch: int = 8,
    amp: bool = False,
) -> list[torch.Tensor]:
    """(N, 3, H, W) same-size images -> per output, (N, C, H, W) logits averaged over covering windows.

    Images smaller than the window are zero-padded to it and the logits cropped back.
    """
    N, _, H, W = images.shape
    x = F.pad(images, (0, max(0, window - W), 0, max(0, window - H)))
    Hp, Wp = x.shape[-2:]
    anchors = [(a, b) for a in window_anchors(Hp, window, stride) for b in window_anchors(Wp, window, stride)]
    crops = torch.stack([x[:, :, a : a + window, b : b + window] for a, b in anchors], dim=1)
    outs = _run_windows(model, crops.flatten(0, 1), layer1, window_batch, amp)
    count = torch.zeros(1, 1, Hp, Wp, device=x.device)
    for a, b in anchors:
        count[..., a : a + window, b : b + window] += 1
    merged = []
    for out in outs:
        out = out.view(N, len(anchors), *out.shape[1:])
        acc = torch.zeros(N, out.shape[2], Hp, Wp, device=x.device)
        for k, (a, b) in enumerate(anchors):
            acc[..., a : a + window, b : b + window] += out[:, k]
        merged.append((acc / count)[..., :H, :W])
    return merged


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
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    scales: Sequence[float] = MS_RATIOS,
    flip: bool = True,
    window: int = 480,
    stride: int = 320,
    layer1: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: torch.device | None = None,
    amp: bool = False,
    base_size: int | None = 520,
    window_batch: int = 8,
) -> list[torch.Tensor]:
    """[P2] or [P2, P1]: softmax probabilities (n_cls, H, W) averaged over the scale/flip variants.

    ``base_size`` is the short side at ratio 1 (None keeps the image's own size). ``mean``/``std``
    default to the model's; they only apply to uint8 input.
    """
    device = device or next(model.parameters()).device
    x = to_input(image, mean or model.mean, std or model.std, device)
    H, W = x.shape[-2:]
    sums: list[torch.Tensor] = []
    n_variants = 0
    with _eval_mode(model):
        for ratio in scales:
            batch = _variant_inputs(x, ratio, base_size, window, flip)
            outs = sliding_window_logits(model, batch, window, stride, layer1, window_batch, amp)
            for i, logits in enumerate(outs):
                logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
                if flip:
                    logits = torch.cat([logits[:1], logits[1:].flip(-1)])
                p = logits.softmax(dim=1).sum(0)
                if len(sums) <= i:
                    sums.append(p)
                else:
                    sums[i] += p
            n_variants += batch.shape[0]
    return [s / n_variants for s in sums]


def predict_probs(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    scales: Sequence[float] = MS_RATIOS,
    flip: bool = True,
    window: int = 480,
    stride: int = 320,
    ensemble_weight: float | None = 0.8,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: torch.device | None = None,
    amp: bool = False,
    base_size: int | None = 520,
    window_batch: int = 8,
) -> torch.Tensor:
    """Multi-scale/flip sliding-window score (n_cls, H, W) float32 on ``device``.

    The score is ``ensemble_weight·P1 + P2`` (the authors' default ``multi`` test), or P2 alone when
    the weight is None or 0; see :func:`multiscale_probs` for the other arguments.
    """
    use_l1 = bool(ensemble_weight)
    probs = multiscale_probs(
        model, image, scales, flip, window, stride, use_l1, mean, std, device, amp, base_size, window_batch
    )
    return probs[0] + ensemble_weight * probs[1] if use_l1 else probs[0]


def predict_logits(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    window: int = 480,
    stride: int = 320,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: torch.device | None = None,
    amp: bool = False,
    base_size: int | None = 520,
    window_batch: int = 8,
) -> torch.Tensor:
    """Single-scale, no-flip window-averaged logits (n_cls, H, W) at image size: the per-epoch evaluation."""
    device = device or next(model.parameters()).device
    x = to_input(image, mean or model.mean, std or model.std, device)
    H, W = x.shape[-2:]
    with _eval_mode(model):
        batch = _variant_inputs(x, 1.0, base_size, window, flip=False)
        (logits,) = sliding_window_logits(model, batch, window, stride, False, window_batch, amp)
    return F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)[0]
