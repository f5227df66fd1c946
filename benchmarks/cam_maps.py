"""How good each attention map of a trained CAM network is on its own, per class, against the masks.

The fine CAM is CA ⊙ ReLU(coarse), with CA the AAF-weighted mean of the class-to-patch attention of
every block and head. This scores the fused CAM built from one map at a time (and from AAF's fusion,
the plain mean and no attention at all, i.e. the coarse CAM alone) on train images of a finished run:
scale 1.0, no flip, per-image min–max over the image's classes, the best background threshold of a
sweep. It shows which maps carry the localisation and which ones AAF averages in.

    python benchmarks/cam_maps.py runs/demo --images 400
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from weaktr.data.info import DatasetInfo
from weaktr.evaluation.metrics import confusion_counts, scores_from_counts
from weaktr.models.cam import CAMNet, load_cam_model
from weaktr.models.timm_factory import normalisation, normalise

THRESHOLDS = np.round(np.arange(0.10, 0.90, 0.05), 2)


def map_cams(model: CAMNet, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """CA ⊙ ReLU(coarse) per source of CA: each map 'b<block>h<head>', 'aaf', 'mean', 'none'."""
    C = model.config.num_classes
    with torch.no_grad():
        feats = model.backbone(images)
        out = model.predict(feats)
    h, w = feats.grid
    maps = {
        f"b{b + 1}h{k}": attn[:, k, :C, C:].reshape(-1, C, h, w)
        for b, attn in enumerate(feats.attn)
        for k in range(attn.shape[1])
    }
    maps["mean"] = torch.stack(list(maps.values())).mean(0)
    maps["aaf"] = out.cross_attn
    maps["none"] = torch.ones_like(out.cross_attn)
    coarse = F.relu(out.coarse_cam)
    return {name: ca * coarse for name, ca in maps.items()}


def best_threshold_ious(
    cams: torch.Tensor, labels: torch.Tensor, gts: np.ndarray
) -> tuple[float, np.ndarray]:
    """(threshold, per-class IoU incl. background) of the best mIoU over THRESHOLDS, scored as the
    pipeline scores (:func:`scores_from_counts`: NaN for a class neither predicted nor present).

    ``cams`` (B, C, h, w) on the patch grid, ``labels`` (B, C) 0/1, ``gts`` (B, H, W) uint8 masks.
    """
    cams = F.interpolate(cams, size=gts.shape[1:], mode="bilinear", align_corners=False)
    mask = labels[:, :, None, None]
    lo = cams.amin(dim=(2, 3), keepdim=True)
    hi = cams.amax(dim=(2, 3), keepdim=True)
    cams = (cams - lo) / (hi - lo + 1e-8) * mask
    n = cams.shape[1] + 1
    best: tuple[float, np.ndarray] | None = None
    for t in THRESHOLDS:
        pred = torch.cat([torch.full_like(cams[:, :1], float(t)), cams], 1).argmax(1).numpy()
        cm = confusion_counts(pred.astype(np.int64), gts.astype(np.int64), n)[:, :n]
        iou = np.array(scores_from_counts(cm.sum(0), cm.sum(1), np.diag(cm))["iou"])
        if best is None or np.nanmean(iou) > np.nanmean(best[1]):
            best = (float(t), iou)
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run (cam/model.safetensors, data with masks)")
    parser.add_argument("--images", type=int, default=400, help="first N images of the train split")
    args = parser.parse_args()
    model = load_cam_model(args.run_dir / "cam" / "model.safetensors")
    info = DatasetInfo.load(args.run_dir / "data" / "dataset.yaml")
    ids = info.ids("train")[: args.images]
    all_labels = info.labels()
    mean, std = normalisation(model.config.backbone)
    images = torch.stack(
        [normalise(np.array(Image.open(info.image_path(i)).convert("RGB")), mean, std) for i in ids]
    )
    gts = np.stack([np.array(Image.open(info.mask_path(i))) for i in ids])
    labels = torch.zeros(len(ids), model.config.num_classes)
    for row, i in enumerate(ids):
        labels[row, [c - 1 for c in all_labels[i]]] = 1
    rows = {}
    for name, cams in map_cams(model, images).items():
        t, iou = best_threshold_ious(cams, labels, gts)
        rows[name] = {
            "threshold": t,
            "miou": float(np.nanmean(iou)),
            "iou": [round(float(v), 3) for v in iou],
        }
        print(f"{name:5s} t={t:.2f} mIoU {np.nanmean(iou):.3f}  " + " ".join(f"{v:.2f}" for v in iou))
    print(
        json.dumps({"run": str(args.run_dir), "images": len(ids), "classes": info.class_names, "maps": rows})
    )


if __name__ == "__main__":
    main()
