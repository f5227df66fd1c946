"""A small convolutional stem usable as timm's ``embed_layer``.

A plain ViT trained from scratch on a few thousand small images barely learns (coarse CAM ~0.26
mIoU on the demo); three stride-2 3x3 convolutions give it the locality prior it lacks. The stem
keeps timm's PatchEmbed attributes so timm's VisionTransformer builds around it unchanged.
"""

from __future__ import annotations

import math

import torch
from timm.layers import Format, to_2tuple
from torch import nn


class ConvStem(nn.Module):
    """log2(patch) stride-2 3x3 conv + BN + ReLU stages, then a 1x1 projection to ``embed_dim``."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 8,
        in_chans: int = 3,
        embed_dim: int = 128,
        bias: bool = True,
        dynamic_img_pad: bool = False,
        strict_img_size: bool = True,
        output_fmt: str | None = None,
        flatten: bool = True,
        **_: object,
    ) -> None:
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        if self.patch_size[0] != self.patch_size[1] or self.patch_size[0] & (self.patch_size[0] - 1):
            raise ValueError(f"ConvStem needs a square power-of-two patch size, got {patch_size}")
        self.img_size = to_2tuple(img_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.dynamic_img_pad = dynamic_img_pad
        self.strict_img_size = strict_img_size
        if output_fmt is not None:
            self.flatten, self.output_fmt = False, Format(output_fmt)
        else:
            self.flatten, self.output_fmt = flatten, Format.NCHW
        stages = int(math.log2(self.patch_size[0]))
        layers: list[nn.Module] = []
        ch = in_chans
        for i in range(stages):
            out = max(embed_dim // 2 ** (stages - 1 - i), 16)
            layers += [
                nn.Conv2d(ch, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            ch = out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(ch, embed_dim, kernel_size=1, bias=bias)

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        return self.patch_size[0] if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> tokens; cropped to a whole number of patches like a strided patch conv."""
        H, W = x.shape[-2:]
        h, w = H // self.patch_size[0], W // self.patch_size[1]
        x = self.proj(self.convs(x))[..., :h, :w]
        if self.flatten:
            return x.flatten(2).transpose(1, 2)
        if self.output_fmt == Format.NHWC:
            return x.permute(0, 2, 3, 1)
        return x
