"""Build timm backbones by name, with pretrained weights from the hub, a local file, or none.

There is no network on many machines that train these models, so the hub path fails fast with
a message naming both ways to get weights, instead of timm's minute of retries.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import timm
import torch
from torch import nn

from weaktr.errors import InputError
from weaktr.models.stem import ConvStem

PRETRAINED_HELP = (
    "pretrained weights for {name!r} could not be loaded from the hub ({why}). Either give a local "
    "file with the override {local} (a timm .pth/.safetensors/.npz checkpoint of that model), set "
    "HF_HUB_OFFLINE=0 on a machine with network access so timm can download it, or train from "
    "scratch with {scratch}."
)
# the run-config keys whose value reaches create_backbone: the CAM network's and the segmenter's
PRETRAINED_SETTINGS = ("cam_train.pretrained", "seg_train.pretrained")


def pretrained_help(name: str, why: str, setting: str | None = None) -> str:
    """The hub failure's advice as overrides ``weaktr run`` accepts: of ``setting``, the key that
    feeds the network being built, or of both keys when the caller did not say."""
    keys = (setting,) if setting else PRETRAINED_SETTINGS
    local = " or ".join(f"{k}=PATH" for k in keys)
    scratch = " or ".join(f"{k}=null" for k in keys)
    return PRETRAINED_HELP.format(name=name, why=why, local=local, scratch=scratch)


def resolve_pretrained(pretrained: str | None) -> str | None:
    """Normalise the user's choice: None / 'none' -> None, 'hub' -> 'hub', anything else is a path."""
    if pretrained is None or str(pretrained).lower() in {"", "none", "false", "scratch"}:
        return None
    if str(pretrained).lower() in {"hub", "true", "timm"}:
        return "hub"
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise InputError("pretrained weights file not found", path)
    return str(path)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers a TCP connect; timm would otherwise retry for about a minute."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def create_backbone(
    name: str, pretrained: str | None = None, stem: str = "patch", setting: str | None = None, **kwargs: Any
) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with weights from ``pretrained`` ('hub', a path, or None).

    ``stem='conv'`` swaps the patch convolution for :class:`ConvStem` (for from-scratch models).
    ``setting`` is the config key ``pretrained`` came from, which the hub failure's advice names.
    timm's own checkpoint filter runs on local files too, so the head is dropped for another class
    count and position embeddings are resampled, exactly as for hub weights.
    """
    source = resolve_pretrained(pretrained)
    if stem == "conv":
        kwargs["embed_layer"] = ConvStem
    elif stem != "patch":
        raise ValueError(f"unknown stem {stem!r} (expected 'patch' or 'conv')")
    if source is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    if source == "hub":
        if os.environ.get("HF_HUB_OFFLINE", "0") not in {"0", "", "false", "False"}:
            raise InputError(pretrained_help(name, "HF_HUB_OFFLINE is set", setting))
        if not hub_reachable():
            raise InputError(pretrained_help(name, "the hub is unreachable from this machine", setting))
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:  # network errors come in many types (OSError, HTTP, hub errors)
            raise InputError(pretrained_help(name, f"{type(exc).__name__}: {exc}", setting)) from exc
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": source}, **kwargs)
    except Exception as exc:
        raise InputError(f"could not load pretrained weights for {name!r}: {exc}", source) from exc


def normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from the model's timm pretrained config (ImageNet's when it has none)."""
    cfg = timm.models.get_pretrained_cfg(name)
    mean = getattr(cfg, "mean", None) if cfg is not None else None
    std = getattr(cfg, "std", None) if cfg is not None else None
    if mean is None or std is None:
        return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return tuple(mean), tuple(std)


def normalise(
    image: np.ndarray | torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | None = None,
) -> torch.Tensor:
    """uint8 H×W×3 RGB -> float32 (3, H, W) ``(x / 255 - mean) / std``, on ``device`` (default: the image's).

    The one image normalisation of every model input: torchvision's ToTensor + Normalize operation
    order, so CAMs, predictions and the authors' golden vectors agree bit for bit. A read-only array
    (``np.asarray`` of a PIL image) is copied rather than shared, as torch cannot share it.
    """
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image) if image.flags.writeable else torch.tensor(image)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 H×W×3 image, got {image.dtype} {tuple(image.shape)}")
    # element-wise in the contiguous H×W×3 layout, then one copy to (3, H, W): the same values as
    # permuting first, without element-wise passes over a strided view (timing: docs/benchmarks.md)
    x = (image if device is None else image.to(device)).float().div_(255)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device)
    s = torch.tensor(std, dtype=torch.float32, device=x.device)
    return x.sub_(m).div_(s).permute(2, 0, 1).contiguous()
