"""How often phase 1's RandomResizedCrop cuts a labelled object out of the crop while its label stays.

The CAM network sees the image-level labels of the whole image with every crop, so a crop that
misses an object teaches it to find that class in what is left: the context. This counts, for a data
set with masks, the (crop, label) pairs whose crop keeps none or under a tenth of the object's pixels,
drawing crops with timm's own sampler (the one ``cam_train_transform`` uses) at each area range.

    python benchmarks/crop_label_noise.py runs/demo/data --scale 0.35 1.0 --scale 0.7 1.0
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation

RATIO = (3 / 4, 4 / 3)  # cam_train_transform's aspect-ratio range


def crop_losses(masks: list[np.ndarray], scale: tuple[float, float], draws: int) -> dict[str, float]:
    """Fractions of (crop, labelled class) pairs that keep 0 and < 10 % of the class's pixels."""
    pairs = gone = under_tenth = 0
    for mask in masks:
        classes = [c for c in np.unique(mask) if c not in (0, 255)]
        totals = {c: int((mask == c).sum()) for c in classes}
        size_probe = Image.new("L", (mask.shape[1], mask.shape[0]))
        for _ in range(draws):
            top, left, h, w = RandomResizedCropAndInterpolation.get_params(size_probe, scale, RATIO)
            crop = mask[top : top + h, left : left + w]
            for c in classes:
                kept = (crop == c).sum() / totals[c]
                pairs += 1
                gone += kept == 0
                under_tenth += kept < 0.1
    return {"pairs": pairs, "cut_out": gone / pairs, "under_10_percent": under_tenth / pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="VOC layout: ImageSets/Segmentation, SegmentationClass")
    parser.add_argument("--split", default="train")
    parser.add_argument("--scale", type=float, nargs=2, action="append", help="crop area range (repeatable)")
    parser.add_argument("--draws", type=int, default=5, help="crops drawn per image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ids = (args.root / "ImageSets" / "Segmentation" / f"{args.split}.txt").read_text().split()
    masks = [np.array(Image.open(args.root / "SegmentationClass" / f"{i}.png")) for i in ids]
    rows = []
    for scale in args.scale or [(0.08, 1.0)]:
        random.seed(args.seed)  # timm's sampler draws from Python's random module
        rows.append({"scale": list(scale), **crop_losses(masks, tuple(scale), args.draws)})
    result = {"root": str(args.root), "split": args.split, "images": len(ids), "rows": rows}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
