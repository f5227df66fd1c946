"""Phase-2 network: a timm ViT encoder plus the Segmenter mask-transformer ("gradient clipping") decoder.

Numerics follow the authors' Segmenter fork (spec §2.1–2.2, golden O7/O10): LayerNorm eps 1e-5
everywhere, exact GELU, final encoder norm applied, bilinear (align_corners False) position-embedding
resize on the patch grid, no /√D in the mask product (a paper option), and an optional second output
from decoder block 1 that the authors' test-time ensemble uses. The encoder is the one the CAM network
uses too (:class:`~weaktr.models.encoder.ViTEncoder`); :meth:`Segmenter.prepare_inference` hands the
network its :class:`~weaktr.models.execution.ExecutionPolicy` once.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import timm
import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from weaktr.errors import InputError
from weaktr.io import load_checkpoint, save_checkpoint
from weaktr.models.cpu_blocks import prepare_blocks
from weaktr.models.encoder import ViTEncoder, arch_overrides, build_vit, resample_pos_embed
from weaktr.models.execution import BF16, FP32, ExecutionPolicy
from weaktr.models.timm_factory import normalisation

LN_EPS = 1e-5
SUPPORTED_BACKBONES = (
    "deit_small_patch16_224",
    "vit_small_patch16_384.augreg_in21k_ft_in1k",
    "vit_small_patch14_dinov2.lvd142m",
    "eva02_small_patch14_224.mim_in22k",
)


@dataclass
class SegConfig:
    """Everything that rebuilds a Segmenter; saved in every checkpoint."""

    backbone: str = "deit_small_patch16_224"
    n_cls: int = 21
    image_size: int = 480  # training crop; the stored position grid is image_size // patch
    patch_size: int | None = None  # override: 16 resamples the patch-14 kernels; 8 for the conv stem
    embed_dim: int | None = None  # tiny from-scratch overrides (None = the timm model's value)
    depth: int | None = None
    num_heads: int | None = None
    stem: str = "patch"
    drop_path: float = 0.1
    dropout: float = 0.0  # encoder dropout (the documented command uses 0)
    decoder_layers: int = 2
    decoder_dropout: float = 0.1
    scale_by_sqrt_d: bool = False  # Eq. 10's /√D; the authors' code has none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegConfig:
        """Build from a dict, rejecting unknown keys so typos in configs fail loudly."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown segmenter config keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The (mean, std) of every input image: the backbone's, for training crops and inference alike."""
        return normalisation(self.backbone)


class SegOutput(NamedTuple):
    """Final logits and the decoder-block-1 logits of the two-layer ensemble, both (B, n_cls, H, W)."""

    logits: torch.Tensor
    logits_layer1: torch.Tensor


class MaskDecoder(nn.Module):
    """Segmenter's MaskTransformer; parameter names match the authors' ``decoder.*`` keys."""

    def __init__(
        self,
        d_encoder: int,
        d_model: int,
        n_cls: int,
        n_layers: int,
        dropout: float,
        scale_by_sqrt_d: bool = False,
    ) -> None:
        super().__init__()
        self.n_cls = n_cls
        self.scale_by_sqrt_d = scale_by_sqrt_d
        norm = partial(nn.LayerNorm, eps=LN_EPS)
        heads = max(1, d_model // 64)
        self.proj_dec = nn.Linear(d_encoder, d_model)
        self.cls_emb = nn.Parameter(torch.zeros(1, n_cls, d_model))
        self.blocks = nn.ModuleList(
            Block(
                d_model,
                heads,
                mlp_ratio=4.0,
                qkv_bias=True,
                proj_drop=dropout,
                attn_drop=dropout,
                norm_layer=norm,
                act_layer=nn.GELU,
            )
            for _ in range(n_layers)
        )
        self.decoder_norm = norm(d_model)
        self.mask_norm = norm(n_cls)
        scale = d_model**-0.5
        self.proj_patch = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.apply(_init_linear_ln)
        trunc_normal_(self.cls_emb, std=0.02)

    def masks(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Sequence after some blocks -> (B, n_cls, h, w) normalised cosine-similarity masks."""
        x = self.decoder_norm(x)
        patches, classes = x[:, : -self.n_cls] @ self.proj_patch, x[:, -self.n_cls :] @ self.proj_classes
        patches = patches / patches.norm(dim=-1, keepdim=True)
        classes = classes / classes.norm(dim=-1, keepdim=True)
        m = patches @ classes.transpose(1, 2)
        if self.scale_by_sqrt_d:
            m = m / math.sqrt(x.shape[-1])
        m = self.mask_norm(m)
        # a view with channels-last strides, as the authors' einops rearrange gives (golden O10)
        return m.transpose(1, 2).reshape(m.shape[0], self.n_cls, grid[0], grid[1])

    def forward(
        self, tokens: torch.Tensor, grid: tuple[int, int], return_layer1: bool = False
    ) -> list[torch.Tensor]:
        """Patch tokens (B, h*w, D) -> [final masks] or [final, after-block-1] masks."""
        x = self.proj_dec(tokens)
        x = torch.cat((x, self.cls_emb.expand(x.shape[0], -1, -1)), dim=1)
        layer1 = None
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if return_layer1 and i == 0:
                layer1 = self.masks(x, grid)
        out = [self.masks(x, grid)]
        return out if layer1 is None else [*out, layer1]


def _init_linear_ln(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class Segmenter(nn.Module):
    """Encoder (timm ViT / EVA) + mask decoder; any input size (zero-padded to the patch, unpadded after)."""

    def __init__(self, cfg: SegConfig, encoder: ViTEncoder) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        self.n_cls = cfg.n_cls
        d = encoder.embed_dim
        self.decoder = MaskDecoder(
            d, d, cfg.n_cls, cfg.decoder_layers, cfg.decoder_dropout, cfg.scale_by_sqrt_d
        )
        self.mean, self.std = cfg.normalisation
        self.execution: ExecutionPolicy | None = None  # set by prepare_inference; not state

    def prepare_inference(self, policy: ExecutionPolicy) -> Segmenter:
        """Run inference under ``policy`` from now on; returns the network.

        A bf16 backbone with float32 heads runs each encoder block in a bf16 copy (fused where
        allowed) between a float32 patch embedding and final norm, and a float32 decoder, whose class
        scores spread by ~1e-2 before its LayerNorm, where bf16 rounding flips pixels (the agreement of
        each part in bf16: docs/benchmarks.md, "Notes on the 6-scale inference"). bf16 heads mean the
        whole inference under autocast (:meth:`precision`). Float32 blocks run fused where the policy
        allows it and their self-check passed. Training is untouched; calling again switches.
        """
        self.execution = policy
        bf16_blocks = policy.backbone_dtype == BF16 and policy.head_dtype == FP32
        prepare_blocks(self.encoder.blocks, policy.fused, bf16=bf16_blocks)
        prepare_blocks(self.decoder.blocks, policy.fused)
        return self

    def precision(self) -> AbstractContextManager[Any]:
        """The autocast inference runs in: bf16 throughout for a policy with bf16 heads; inference
        functions enter it around their whole loop, as the policy's float32 parts are outside it."""
        policy = self.execution or ExecutionPolicy(next(self.parameters()).device)
        return policy.autocast(policy.head_dtype)

    def forward_masks(self, x: torch.Tensor, return_layer1: bool = False) -> list[torch.Tensor]:
        """(B, 3, H0, W0) -> [final] or [final, layer-1] masks on the patch grid of the padded input.

        ``forward`` upsamples these to the padded size and crops; the sliding-window inference folds
        that upsampling into one linear map per image instead (it is linear, and so is the averaging).
        """
        H0, W0 = x.shape[-2:]
        p = self.patch_size
        x = F.pad(x, (0, (-W0) % p, 0, (-H0) % p))
        H, W = x.shape[-2:]
        tokens = self.encoder(x)[:, self.encoder.num_prefix_tokens :]
        return self.decoder(tokens, (H // p, W // p), return_layer1)

    def forward(self, x: torch.Tensor, return_layer1: bool = False) -> torch.Tensor | SegOutput:
        """(B, 3, H, W) normalised images -> logits (B, n_cls, H, W), or a SegOutput with layer-1 logits."""
        H0, W0 = x.shape[-2:]
        masks = self.forward_masks(x, return_layer1)
        H, W = (masks[0].shape[-2] * self.patch_size, masks[0].shape[-1] * self.patch_size)
        up = [
            F.interpolate(m, size=(H, W), mode="bilinear", align_corners=False)[..., :H0, :W0] for m in masks
        ]
        return up[0] if not return_layer1 else SegOutput(up[0], up[1])


def build_segmenter(cfg: SegConfig, pretrained: str | None = None, setting: str | None = None) -> Segmenter:
    """Build the encoder through the timm factory (eps 1e-5 LayerNorms, exact GELU) and a fresh decoder.

    Pretrained weights are loaded at the model's own size, then the position grid is resized to the crop
    grid with the authors' bilinear rule (their loader does the same for DeiT's 14×14 -> 30×30).
    """
    kw: dict[str, Any] = dict(
        drop_rate=cfg.dropout,
        drop_path_rate=cfg.drop_path,
        norm_layer=partial(nn.LayerNorm, eps=LN_EPS),
    )
    # A conv-stem file (``weaktr pretrain``) was trained at its own small grid, not timm's 224 px one:
    # built at the crop size, it loads unresampled when the grids agree and is resampled once otherwise.
    if pretrained is None or cfg.stem == "conv":
        kw["img_size"] = cfg.image_size
    vit = build_vit(cfg.backbone, pretrained, cfg.stem, setting, arch_overrides(cfg), **kw)
    if not hasattr(vit, "blocks") or not hasattr(vit, "patch_embed"):
        raise InputError(
            f"backbone {cfg.backbone!r} is not a plain ViT/EVA (supported: {SUPPORTED_BACKBONES})"
        )
    p = int(vit.patch_embed.patch_size[0])
    grid = (cfg.image_size // p,) * 2
    if tuple(vit.patch_embed.grid_size) != grid and vit.pos_embed is not None:
        n_pre = 0 if vit.no_embed_class else int(vit.num_prefix_tokens)
        with torch.no_grad():
            vit.pos_embed = nn.Parameter(resample_pos_embed(vit.pos_embed.data, n_pre, grid))
        vit.patch_embed.set_input_size(img_size=cfg.image_size)
    return Segmenter(cfg, ViTEncoder(vit, pos_rule="bilinear"))


def param_groups(model: Segmenter, lr: float, encoder_lr_scale: float = 0.1) -> list[dict[str, Any]]:
    """Optimiser groups: the encoder at lr·scale (authors' --enc-lr 0.1), the decoder at lr.

    ``lr_scale`` is kept in each group so a per-iteration schedule can re-apply it.
    """
    return [
        {
            "name": "encoder",
            "params": [p for p in model.encoder.parameters() if p.requires_grad],
            "lr": lr * encoder_lr_scale,
            "lr_scale": encoder_lr_scale,
        },
        {
            "name": "decoder",
            "params": [p for p in model.decoder.parameters() if p.requires_grad],
            "lr": lr,
            "lr_scale": 1.0,
        },
    ]


def save_segmenter(path: str | Path, model: Segmenter) -> None:
    """Save weights with the SegConfig that rebuilds them (atomic safetensors)."""
    save_checkpoint(path, model.state_dict(), model.cfg.to_dict(), metadata={"weaktr_model": "segmenter"})


def load_segmenter(path: str | Path, device: torch.device | str = "cpu") -> Segmenter:
    """Rebuild a Segmenter from a checkpoint written by :func:`save_segmenter`, in eval mode."""
    state, cfg_dict = load_checkpoint(path)
    try:
        cfg = SegConfig.from_dict(cfg_dict)
    except (InputError, TypeError) as exc:
        raise InputError(f"not a segmenter checkpoint ({exc})", path) from exc
    model = build_segmenter(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(
            f"checkpoint does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}", path
        )
    return model.to(device).eval()


def _native_dims(backbone: str) -> tuple[int, int, int]:
    """(embed_dim, depth, patch) of the timm model's own definition, built on the meta device (no memory)."""
    with torch.device("meta"):
        m = timm.create_model(backbone, pretrained=False, num_classes=0)
    return int(m.embed_dim), len(m.blocks), int(m.patch_embed.patch_size[0])


_OFFICIAL_DROPPED = ("encoder.head.", "encoder.pre_logits.")


def convert_official_segmenter_state(
    sd_or_path: dict[str, torch.Tensor] | str | Path, backbone: str = "deit_small_patch16_224"
) -> tuple[dict[str, torch.Tensor], SegConfig]:
    """Map the authors' Segmenter state (``checkpoint.pth`` or its ``model`` dict) to ours, with its config.

    Key names already agree except the unused ImageNet head, which is dropped; anything else unknown is
    an error. Sizes (classes, width, depth, patch, crop grid) are read from the tensors.
    """
    path = None
    if isinstance(sd_or_path, (str, Path)):
        path = Path(sd_or_path)
        if not path.is_file():
            raise InputError("checkpoint not found", path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"not a readable torch checkpoint ({exc})", path) from exc
        sd = obj.get("model", obj) if isinstance(obj, dict) else obj
    else:
        sd = sd_or_path
    if not isinstance(sd, dict) or "decoder.cls_emb" not in sd or "encoder.pos_embed" not in sd:
        raise InputError(
            "not an official Segmenter state dict (no decoder.cls_emb / encoder.pos_embed)", path
        )
    if "encoder.dist_token" in sd:
        raise InputError("distilled Segmenter encoders (dist_token) are not supported", path)
    state = {k: v for k, v in sd.items() if not k.startswith(_OFFICIAL_DROPPED)}
    n_cls, d = sd["decoder.cls_emb"].shape[1:]
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.blocks."))
    patch = int(sd["encoder.patch_embed.proj.weight"].shape[-1])
    n_dec = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("decoder.blocks."))
    grid = math.isqrt(sd["encoder.pos_embed"].shape[1] - 1)
    nat_dim, nat_depth, nat_patch = _native_dims(backbone)
    cfg = SegConfig(
        backbone=backbone,
        n_cls=int(n_cls),
        image_size=grid * patch,
        patch_size=None if patch == nat_patch else patch,
        embed_dim=None if d == nat_dim else int(d),
        depth=None if depth == nat_depth else depth,
        num_heads=None if d == nat_dim else max(1, int(d) // 64),
        decoder_layers=n_dec,
    )
    with torch.device("meta"):  # shapes only: no memory, no init cost
        ours = build_segmenter(cfg).state_dict()
    unknown = sorted(set(state) - set(ours))
    missing = sorted(set(ours) - set(state))
    if unknown or missing:
        raise InputError(
            f"official Segmenter state does not map: unknown keys {unknown[:8]}, missing keys {missing[:8]}",
            path,
        )
    bad = [k for k in state if state[k].shape != ours[k].shape]
    if bad:
        raise InputError(f"official Segmenter state has unexpected shapes for {bad[:8]}", path)
    return {k: v.float() for k, v in state.items()}, cfg
