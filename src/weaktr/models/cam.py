"""WeakTr's phase-1 CAM network: a ViT with C class tokens, a conv coarse-CAM head and AAF.

Exact to the authors' code (spec §1.1–1.4, golden ``cam_model``): class logits are channel means of
the raw last-block class tokens (no final norm); the coarse CAM is a 3×3 conv on the patch grid; the
fine CAM refines CA ⊙ ReLU(coarse) with the fused patch attention of the same image. By default the
attention, its features and the coarse CAM are detached before AAF, so the fine loss trains AAF only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from weaktr.choices import CAM_KINDS
from weaktr.errors import InputError
from weaktr.io import load_checkpoint, save_checkpoint
from weaktr.models.aaf import AAF, FEATURES, FUSIONS, POOLS
from weaktr.models.backbone import ViTBackbone
from weaktr.models.cpu_blocks import prepare_blocks
from weaktr.models.encoder import BackboneOutput, arch_overrides
from weaktr.models.execution import FP32, ExecutionPolicy
from weaktr.models.timm_factory import normalisation

CHECKPOINT_TYPE = "weaktr-cam"
OFFICIAL_AAF_PREFIX = "adaptive_attention_fusion."
OFFICIAL_BACKBONE_KEYS = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")


@dataclass
class CAMConfig:
    """Everything that rebuilds a :class:`CAMNet` (saved inside every checkpoint)."""

    backbone: str = "deit_small_patch16_224"
    num_classes: int = 20
    img_size: int = 224
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    stem: str = "patch"
    drop_path: float = 0.1
    aaf_features: str = "code"
    aaf_pool: str = "max"
    aaf_reduction: float = 8.0
    aaf_feat_reduction: int = 8
    fusion: str = "aaf"
    detach: bool = True
    refine: bool = True

    def __post_init__(self) -> None:
        for value, allowed, key in (
            (self.aaf_features, FEATURES, "aaf_features"),
            (self.aaf_pool, POOLS, "aaf_pool"),
            (self.fusion, FUSIONS, "fusion"),
            (self.stem, ("patch", "conv"), "stem"),
        ):
            if value not in allowed:
                raise InputError(f"CAM config {key} must be one of {allowed}, got {value!r}")
        if self.num_classes < 1:
            raise InputError(f"CAM config num_classes must be >= 1, got {self.num_classes}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CAMConfig:
        """Build from a dict; unknown keys are an error (a typo would otherwise be silently ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown CAM config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The (mean, std) of every input image: the backbone's, so training, CAMs, views and API agree."""
        return normalisation(self.backbone)


@dataclass
class CAMOutput:
    """All predictions of one forward pass; maps are on the (h, w) patch grid, N = h·w."""

    cls_logits: torch.Tensor  # (B, C) channel mean of the class tokens
    coarse_logits: torch.Tensor  # (B, C) global average of coarse_cam
    fine_logits: torch.Tensor  # (B, C) spatial mean of fine_cam
    coarse_cam: torch.Tensor  # (B, C, h, w) 3×3 conv output before ReLU
    cross_attn: torch.Tensor  # (B, C, h, w) fused class-to-patch attention CA
    fused_cam: torch.Tensor  # (B, C, h, w) CA ⊙ ReLU(coarse), the authors' 'cams_fused'
    fine_cam: torch.Tensor  # (B, C, h, w) PA · fused_cam
    patch_attn: torch.Tensor  # (B, N, N) fused patch attention PA, one per image
    aaf_weights: torch.Tensor  # (B, K·H)
    refine: bool = True  # the network's own CAM is the refined fine CAM (else the fused CAM)

    def cam(self, kind: str = "default") -> torch.Tensor:
        """The (B, C, h, w) map that ``kind`` names (:data:`weaktr.choices.CAM_KINDS`): 'default' the
        network's own, 'coarse' ReLU(coarse CAM), 'fused' CA ⊙ ReLU(coarse), 'refined' PA · fused."""
        if kind == "default":
            return self.fine_cam if self.refine else self.fused_cam
        if kind == "coarse":
            return F.relu(self.coarse_cam)
        if kind == "fused":
            return self.fused_cam
        if kind == "refined":
            return self.fine_cam
        raise InputError(f"unknown CAM kind {kind!r}; choose one of {', '.join(CAM_KINDS)}")


class CAMNet(nn.Module):
    """ViT backbone + 3×3 conv coarse-CAM head + AAF; forward returns a :class:`CAMOutput`."""

    def __init__(self, config: CAMConfig, pretrained: str | None = None, setting: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = ViTBackbone(
            config.backbone,
            config.num_classes,
            config.img_size,
            pretrained,
            config.stem,
            config.drop_path,
            setting,
            **arch_overrides(config),
        )
        b = self.backbone
        self.head = nn.Conv2d(b.embed_dim, config.num_classes, kernel_size=3, padding=1)
        self.aaf = AAF(
            b.depth,
            b.num_heads,
            b.head_dim,
            config.aaf_features,
            config.aaf_pool,
            config.aaf_reduction,
            config.aaf_feat_reduction,
            config.fusion,
        )
        self.execution: ExecutionPolicy | None = None  # set by prepare_inference; not state

    def prepare_inference(self, policy: ExecutionPolicy) -> CAMNet:
        """Run inference under ``policy`` from now on: its dtypes, and the fused CPU blocks where it
        allows them and their self-check passed. Training is untouched (it runs the blocks themselves);
        calling again with another policy switches. Returns the network."""
        self.execution = policy
        prepare_blocks(self.backbone.vit.blocks, policy.fused)
        self.backbone.vit.keep_maps = True  # the heads consume the maps before the next forward
        return self

    def forward(self, x: torch.Tensor) -> CAMOutput:
        """(B, 3, H, W) -> all maps and logits. Under a policy (:meth:`prepare_inference`), inference
        runs the backbone in its dtype and the heads in theirs: with a bf16 backbone, float32 heads
        keep the fused and refined CAMs, sums over hundreds of patches whose per-class spread can be
        far below their size, from moving seed borders (docs/benchmarks.md)."""
        policy = self.execution
        if policy is None or torch.is_grad_enabled():
            return self.predict(self.backbone(x))
        with policy.autocast(policy.backbone_dtype):
            feats = self.backbone(x)
        if policy.head_dtype == FP32 and policy.backbone_dtype != FP32:
            feats = feats.float()
        with policy.autocast(policy.head_dtype):
            return self.predict(feats)

    def predict(self, feats: BackboneOutput) -> CAMOutput:
        """The heads on top of backbone outputs (split from forward so tests can inspect ``feats``)."""
        C = self.config.num_classes
        h, w = feats.grid
        tokens = feats.tokens
        B, _, D = tokens.shape
        cls_logits = tokens[:, :C].mean(dim=-1)
        coarse = self.head(tokens[:, C:].reshape(B, h, w, D).permute(0, 3, 1, 2))
        coarse_logits = coarse.mean(dim=(2, 3))

        attn, attn_out, head_out, coarse_in = feats.attn, feats.attn_out, feats.head_out, coarse
        if self.config.detach:
            attn, attn_out, head_out = ([t.detach() for t in ts] for ts in (attn, attn_out, head_out))
            coarse_in = coarse.detach()
        fusion = self.aaf(attn, attn_out, head_out)
        cross_attn = fusion.fused[:, :C, C:].reshape(B, C, h, w)
        patch_attn = fusion.fused[:, C:, C:]
        fused_cam = cross_attn * F.relu(coarse_in)
        fine_cam = (fused_cam.flatten(2) @ patch_attn.transpose(1, 2)).reshape(B, C, h, w)
        return CAMOutput(
            cls_logits,
            coarse_logits,
            fine_cam.mean(dim=(2, 3)),
            coarse,
            cross_attn,
            fused_cam,
            fine_cam,
            patch_attn,
            fusion.weights,
            self.config.refine,
        )


def cam_loss(out: CAMOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three multilabel soft-margin losses (weights 1) and their sum, keyed cls/coarse/fine/total."""
    labels = labels.to(out.cls_logits.dtype)
    losses = {
        "cls": F.multilabel_soft_margin_loss(out.cls_logits, labels),
        "coarse": F.multilabel_soft_margin_loss(out.coarse_logits, labels),
        "fine": F.multilabel_soft_margin_loss(out.fine_logits, labels),
    }
    losses["total"] = losses["cls"] + losses["coarse"] + losses["fine"]
    return losses


def build_cam_model(cfg: CAMConfig, pretrained: str | None = None, setting: str | None = None) -> CAMNet:
    """A new CAMNet; ``pretrained`` is None, 'hub' or a timm checkpoint of the backbone, from the
    config key ``setting`` (named by the advice when the hub fails)."""
    return CAMNet(cfg, pretrained, setting)


def param_groups(model: CAMNet, backbone_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Optimiser groups with an ``lr_scale`` each (see ``engine.optim.set_lr``): the pretrained backbone
    (patch embedding, position grid, blocks, norm) at lr·scale, the new parameters (class tokens,
    heads) at the lr. At scale 1, the authors' one lr for all, a single group, as before the option
    existed: saved optimiser states keep their layout and resume."""
    if not backbone_lr_scale >= 0:
        raise InputError(f"cam_train.backbone_lr_scale must be >= 0 (0 freezes), got {backbone_lr_scale}")
    params = [p for p in model.parameters() if p.requires_grad]
    if backbone_lr_scale == 1.0:
        return [{"params": params, "lr_scale": 1.0}]
    pretrained = {id(p) for n, p in model.backbone.vit.named_parameters() if n != "cls_token"}
    return [
        {"params": [p for p in params if id(p) in pretrained], "lr_scale": backbone_lr_scale},
        {"params": [p for p in params if id(p) not in pretrained], "lr_scale": 1.0},
    ]


def save_cam_model(path: str | Path, model: CAMNet) -> None:
    """Weights and config in one safetensors checkpoint (atomic)."""
    save_checkpoint(path, model.state_dict(), {"type": CHECKPOINT_TYPE, "cam": model.config.to_dict()})


def load_cam_model(path: str | Path, device: torch.device | str = "cpu") -> CAMNet:
    """Rebuild a CAMNet saved by :func:`save_cam_model`, in eval mode on ``device``."""
    state, config = load_checkpoint(path)
    if config.get("type") != CHECKPOINT_TYPE or "cam" not in config:
        raise InputError(f"not a WeakTr CAM checkpoint (type {config.get('type')!r})", path)
    model = CAMNet(CAMConfig.from_dict(config["cam"]))
    _load_strict(model, state, path)
    return model.to(device).eval()


def map_official_key(key: str) -> str:
    """Our parameter name for one of the authors' state-dict keys (KeyError when it has none)."""
    if key.startswith(OFFICIAL_AAF_PREFIX):
        return "aaf." + key[len(OFFICIAL_AAF_PREFIX) :]
    if key.startswith("head."):
        return key
    if key.startswith(OFFICIAL_BACKBONE_KEYS):
        return "backbone.vit." + key
    raise KeyError(key)


def convert_official_cam_state(
    source: dict[str, torch.Tensor] | str | Path,
    query: torch.Tensor | np.ndarray | str | Path | None = None,
    **overrides: Any,
) -> tuple[dict[str, torch.Tensor], CAMConfig]:
    """Convert the authors' WeakTr state dict (a dict, their ``.pth`` with a ``model`` key, or a
    ``.safetensors``) to ours, inferring the architecture from the tensor shapes.

    The AAF pooling cannot be read from weights: it defaults to the documented ``max``; pass
    ``aaf_pool='avg'`` (or any other CAMConfig field) in ``overrides`` to change it. Their
    ``AAF_RandWeight`` model keeps its fixed vector outside the state dict, in ``query.npy``: pass it
    (or its path) as ``query`` and the result is a ``fusion='randweight'`` model.
    """
    path = None if isinstance(source, dict) else Path(source)
    state = _read_official(path) if path is not None else source
    bad = sorted(k for k, v in state.items() if not torch.is_floating_point(v))
    if bad:
        raise InputError(f"official CAM state has non-float tensors (encoded weights?): {bad[:5]}", path)
    if query is not None:  # the head-wise FFN, if their variant kept one, is unused by it
        state = {k: v for k, v in state.items() if not k.startswith(OFFICIAL_AAF_PREFIX + "attn_feat_ffn.")}
        state[OFFICIAL_AAF_PREFIX + "query"] = _read_query(query)
        overrides = {**overrides, "fusion": "randweight"}
    elif OFFICIAL_AAF_PREFIX + "attn_head_ffn.0.weight" in state and not any(
        k.startswith(OFFICIAL_AAF_PREFIX + "attn_feat_ffn.") for k in state
    ):
        raise InputError(
            "official CAM state has no head-wise FFN (attn_feat_ffn): an AAF_RandWeight model? "
            "Pass its query.npy (convert cam --query)",
            path,
        )
    try:
        cfg = _infer_official_config(state, overrides)
        converted = {map_official_key(k): v for k, v in state.items()}
    except KeyError as exc:
        raise InputError(f"official CAM state: unexpected or missing key {exc}", path) from exc
    with torch.device("meta"):  # shapes only: no allocation, no use of the global RNG
        reference = CAMNet(cfg)
    _check_fits(reference.state_dict(), converted, path)
    return converted, cfg


def _read_official(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError("official CAM checkpoint not found", path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    data = torch.load(path, map_location="cpu", weights_only=True)
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise InputError("official CAM checkpoint holds no state dict under 'model'", path)
    return state


def _read_query(query: torch.Tensor | np.ndarray | str | Path) -> torch.Tensor:
    """The RandWeight vector as a flat float32 tensor, from a tensor, an array or a ``.npy`` file."""
    if isinstance(query, str | Path):
        path = Path(query)
        if not path.is_file():
            raise InputError("RandWeight query file not found", path)
        try:
            query = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"not a numpy .npy array ({exc})", path) from exc
    t = torch.as_tensor(query)
    if not t.is_floating_point():
        raise InputError(f"the RandWeight query must be floating point, got {t.dtype}")
    return t.reshape(-1).float()


def _infer_official_config(state: dict[str, torch.Tensor], overrides: dict[str, Any]) -> CAMConfig:
    """Architecture from shapes: C and D from cls_token, patch from the patch conv, heads from AAF."""
    _, C, D = state["cls_token"].shape
    patch = state["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state["pos_embed"].shape[1] - C)
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    hidden, maps = state[OFFICIAL_AAF_PREFIX + "attn_head_ffn.0.weight"].shape
    if depth < 1 or maps % depth or D % (maps // depth):
        raise InputError(f"official CAM state: {maps} AAF maps do not fit depth {depth} and width {D}")
    head_dim = D // (maps // depth)
    feat_reduction = CAMConfig.aaf_feat_reduction  # unused by RandWeight, which has no head-wise FFN
    feat_key = OFFICIAL_AAF_PREFIX + "attn_feat_ffn.0.weight"
    if feat_key in state:
        feat_hidden, feat_in = state[feat_key].shape
        if feat_in != head_dim:
            raise InputError(
                f"official CAM state: AAF head dim {feat_in} does not fit depth {depth} and width {D}"
            )
        feat_reduction = head_dim // feat_hidden
        if int(head_dim / feat_reduction) != feat_hidden:
            raise InputError(
                f"official CAM state: head-wise FFN {head_dim}->{feat_hidden} is no integer reduction"
            )
    reduction = maps / hidden
    if int(maps / reduction) != hidden:  # float rounding: nudge so that int(maps / reduction) == hidden
        reduction = math.nextafter(reduction, 0.0)
    cfg = dict(
        backbone="deit_small_patch16_224",
        num_classes=C,
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=D,
        depth=depth,
        num_heads=maps // depth,
        aaf_reduction=reduction,
        aaf_feat_reduction=feat_reduction,
    )
    return CAMConfig.from_dict({**cfg, **overrides})


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path | None) -> None:
    """load_state_dict(strict=True), after :func:`_check_fits` gave a readable error for a bad state."""
    _check_fits(model.state_dict(), state, path)
    model.load_state_dict(state)


def _check_fits(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: str | Path | None
) -> None:
    """One error listing the missing, unexpected and misshaped keys of ``state``."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        raise InputError(
            f"CAM state does not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"wrong shape {shapes[:8]}",
            path,
        )
