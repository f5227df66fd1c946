"""Start the Segmenter's encoder from the phase-1 CAM network's ViT (``seg_train.pretrained: cam``).

Where no pretrained weights exist (the from-scratch demo, a domain far from ImageNet), the CAM
backbone is the only encoder that has seen the data. Both are the same timm ViT, so every weight
carries over except the prefix: the CAM network has one class token (and position slot) per class,
the Segmenter one; it gets their mean. The patch grid of the position embedding is resized to the
segmenter's crop with the segmenter's own rule when the two image sizes differ.
"""

from __future__ import annotations

from pathlib import Path

import torch

from weaktr.errors import InputError
from weaktr.io import load_checkpoint
from weaktr.models.cam import CHECKPOINT_TYPE
from weaktr.models.segmenter import Segmenter, resize_pos_grid

_PREFIX = "backbone.vit."
CAM_START = "cam"  # the value of seg_train.pretrained that asks for this start


def encoder_state_from_cam(path: str | Path, model: Segmenter) -> dict[str, torch.Tensor]:
    """The CAM checkpoint at ``path`` as a state dict for ``model.encoder``; an error if they differ."""
    state, config = load_checkpoint(path)
    if config.get("type") != CHECKPOINT_TYPE or "cam" not in config:
        raise InputError(f"not a WeakTr CAM checkpoint (type {config.get('type')!r})", path)
    n_cls_tokens = int(config["cam"]["num_classes"])
    if config["cam"]["backbone"] != model.cfg.backbone or config["cam"]["stem"] != model.cfg.stem:
        raise InputError(
            f"the CAM backbone ({config['cam']['backbone']}, {config['cam']['stem']} stem) is not the "
            f"segmenter's ({model.cfg.backbone}, {model.cfg.stem} stem): seg_train.pretrained=cam needs "
            "the same architecture in cam_model and seg_model",
            path,
        )
    enc = {k[len(_PREFIX) :]: v for k, v in state.items() if k.startswith(_PREFIX)}
    enc["cls_token"] = enc["cls_token"].mean(dim=1, keepdim=True)
    pos = enc["pos_embed"]
    pos = torch.cat((pos[:, :n_cls_tokens].mean(dim=1, keepdim=True), pos[:, n_cls_tokens:]), dim=1)
    cam_grid = (int(config["cam"]["img_size"]) // model.patch_size,) * 2
    enc["pos_embed"] = resize_pos_grid(pos, cam_grid, model.pos_grid, 1)
    ours = model.encoder.state_dict()
    bad = sorted(k for k in ours if k not in enc or enc[k].shape != ours[k].shape)
    if bad or set(enc) - set(ours):
        raise InputError(
            "the CAM backbone does not fit the segmenter's encoder (seg_train.pretrained=cam needs the "
            f"same embed_dim, depth, num_heads and patch_size in cam_model and seg_model): {bad[:5]}",
            path,
        )
    return enc


def init_encoder_from_cam(model: Segmenter, path: str | Path) -> Segmenter:
    """Load the CAM network's ViT at ``path`` into ``model.encoder`` (in place); returns ``model``."""
    state = encoder_state_from_cam(path, model)
    with torch.no_grad():
        model.encoder.load_state_dict(state)
    return model
