"""Sliding-window, multi-scale + flip segmentation inference with the two-layer ensemble (spec §2.5).

The authors' order matters for parity: window outputs are averaged on the *logits* (count map), resized
to the image size and flipped back, and only then soft-maxed; the probabilities of all scale/flip
variants are averaged; the final score is ``w·P1 + P2`` where P1 comes from decoder block 1 (golden O7).
Each window runs the encoder once for both outputs, and a scale's windows (with its flipped copy) are
batched through the model in chunks. ``amp`` means bf16 autocast on CUDA and, on the CPU, bf16 in the
encoder's Linear layers only (:func:`_bf16_linears`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial

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


@contextmanager
def _bf16_linears(model: nn.Module) -> Iterator[None]:
    """CPU mixed precision: the encoder's Linear layers compute in bf16 (weights cast once), the rest fp32.

    Plain CPU autocast also puts attention and the decoder in bf16. That buys nothing for attention
    (torch's fused CPU kernel is no faster in bf16 than in fp32) but costs agreement: the decoder's
    class scores spread by ~1e-2 before its LayerNorm, so bf16 rounding there flips ~1.5 % of the
    window pixels of a random-weight DeiT-S; this split flips ~0.4 % (0.36 % after 6 scales × flip).
    """
    linears = [m for m in getattr(model, "encoder", model).modules() if isinstance(m, nn.Linear)]
    for m in linears:
        w = m.weight.detach().to(torch.bfloat16)
        b = None if m.bias is None else m.bias.detach().to(torch.bfloat16)
        m.forward = partial(_linear_bf16, weight=w, bias=b)  # instance attribute shadows Linear.forward
    try:
        yield
    finally:
        for m in linears:
            del m.forward


def _linear_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.to(torch.bfloat16), weight, bias).float()


def _precision(model: nn.Module, device: torch.device, amp: bool) -> AbstractContextManager[None]:
    """bf16 autocast on CUDA; the encoder-linears-only bf16 of :func:`_bf16_linears` on the CPU."""
    if not amp:
        return nullcontext()
    if device.type == "cpu":
        return _bf16_linears(model)
    return torch.autocast(device.type, dtype=torch.bfloat16)


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

    Images smaller than the window are zero-padded to it and the logits cropped back. Window outputs
    are added into the sums chunk by chunk, so memory holds one chunk of window logits, not all.
    """
    N, _, H, W = images.shape
    x = F.pad(images, (0, max(0, window - W), 0, max(0, window - H)))
    Hp, Wp = x.shape[-2:]
    anchors = [(a, b) for a in window_anchors(Hp, window, stride) for b in window_anchors(Wp, window, stride)]
    jobs = [(n, a, b) for a, b in anchors for n in range(N)]
    count = torch.zeros(1, 1, Hp, Wp, device=x.device)
    for a, b in anchors:
        count[..., a : a + window, b : b + window] += 1
    sums: list[torch.Tensor] = []
    with _precision(model, x.device, amp):
        for i in range(0, len(jobs), window_batch):
            chunk = jobs[i : i + window_batch]
            crops = torch.stack([x[n, :, a : a + window, b : b + window] for n, a, b in chunk])
            y = model(crops, return_layer1=layer1)
            outs = [y.logits, y.logits_layer1] if layer1 else [y]
            if not sums:
                sums = [torch.zeros(N, o.shape[1], Hp, Wp, device=x.device) for o in outs]
            for acc, out in zip(sums, outs, strict=True):
                for k, (n, a, b) in enumerate(chunk):
                    acc[n, :, a : a + window, b : b + window] += out[k].float()
    return [(acc / count)[..., :H, :W] for acc in sums]


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
