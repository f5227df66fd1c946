"""The views stage: the CAM network's intermediate maps of the report's sample images, as artefacts.

The report shows, per sample image, every intermediate map of the paper's Fig. A10 (coarse CAM,
cross-attention, patch attention at a query point, fine CAM with and without the patch-attention
refinement) and the AAF weights. Computing them needs the CAM network, so this stage does it once,
at scale 1.0, and writes ``views/<id>.npz`` plus ``views/index.json``; the report only reads them
and never builds a model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from weaktr.data.images import load_image, load_label_map
from weaktr.data.info import DatasetInfo
from weaktr.data.sampling import view_ids
from weaktr.io import save_views, write_json
from weaktr.models.cam import CAMNet, load_cam_model
from weaktr.models.timm_factory import normalise
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import barrier
from weaktr.runtime.layout import RunLayout

log = logging.getLogger("weaktr")
VIEW_SCALE = 1.0  # one forward at the image's own size (generation adds more scales and flips)


@dataclass
class CamViews:
    """Display maps of one image and class, each (H, W) in [0, 1], and the query point (y, x)."""

    coarse: np.ndarray
    cross: np.ndarray
    patch: np.ndarray
    fine: np.ndarray
    fused: np.ndarray
    query: tuple[float, float]
    aaf: np.ndarray

    def maps(self) -> dict[str, np.ndarray]:
        """The maps by name, as :func:`weaktr.io.save_views` stores them."""
        return {
            "coarse": self.coarse,
            "cross": self.cross,
            "patch": self.patch,
            "fine": self.fine,
            "fused": self.fused,
        }


def _minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min() + 1e-8)


@torch.no_grad()
def cam_views(model: CAMNet, image: np.ndarray, label_id: int, device: torch.device) -> CamViews:
    """Every intermediate map of ``label_id`` at scale 1.0, upsampled to the image and min–max scaled.

    The patch attention is the row of the fused patch attention of the query patch, which is the
    argmax of the refined fine CAM (where the refinement draws its evidence from).
    """
    out = model(normalise(image, *model.config.normalisation, device)[None])
    c = label_id - 1
    H, W = image.shape[:2]
    h, w = out.fine_cam.shape[-2:]
    q = int(out.fine_cam[0, c].flatten().argmax())
    qy, qx = divmod(q, w)

    def up(m: torch.Tensor) -> np.ndarray:
        m = F.interpolate(m.float()[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
        return _minmax(m).cpu().numpy()

    return CamViews(
        coarse=up(F.relu(out.coarse_cam[0, c])),
        cross=up(out.cross_attn[0, c]),
        patch=up(out.patch_attn[0, q].reshape(h, w)),
        fine=up(out.fine_cam[0, c]),
        fused=up(out.fused_cam[0, c]),
        query=((qy + 0.5) * H / h, (qx + 0.5) * W / w),
        aaf=out.aaf_weights[0].float().cpu().numpy(),
    )


def main_class(labels: list[int], gt: np.ndarray | None) -> int:
    """The image's label with the most GT pixels (its first label without GT)."""
    if gt is None or len(labels) == 1:
        return labels[0]
    return max(labels, key=lambda c: int((gt == c).sum()))


def write_views(
    model: CAMNet, dataset: DatasetInfo, split: str, ids: list[str], layout: RunLayout, device: torch.device
) -> dict[str, Any]:
    """Views of ``ids`` (one class each) into ``layout.views``; the index is written last, so its
    presence means every file it names is complete. Returns the index."""
    labels = dataset.labels()
    entries = []
    for image_id in ids:
        image = load_image(dataset.image_path(image_id))
        gt_path = dataset.mask_path(image_id) if dataset.masks is not None else None
        gt = load_label_map(gt_path) if gt_path is not None and gt_path.is_file() else None
        cls = main_class(labels[image_id], gt)
        v = cam_views(model, image, cls, device)
        save_views(layout.view(image_id), v.maps(), v.aaf)
        entries.append({"id": image_id, "class": cls, "query": [float(v.query[0]), float(v.query[1])]})
    b = model.backbone
    index = {
        "split": split,
        "scale": VIEW_SCALE,
        "refine": bool(model.config.refine),
        "fusion": model.config.fusion,
        "depth": b.depth,
        "num_heads": b.num_heads,
        "images": entries,
    }
    write_json(layout.views_index, index)
    return index


def views_stage(ctx: RunContext) -> dict[str, Any]:
    """The views of the report's sample of the train split (report.n_examples images), on the main rank."""
    if not ctx.cfg.report.enabled:
        return {"skipped": "report.enabled is false"}
    lay, split = ctx.layout, ctx.cfg.data.train_split
    result: dict[str, Any] = {}
    if ctx.dist.is_main:
        model = load_cam_model(lay.cam_model, ctx.device)
        ctx.dataset.check_model_classes(model.config.num_classes, cam=True, checkpoint=lay.cam_model)
        ids = view_ids(ctx.dataset, split, ctx.cfg.report.n_examples)
        index = write_views(model, ctx.dataset, split, ids, lay, ctx.device)
        log.info("views: %d images of split %r → %s", len(ids), split, lay.views)
        result = {"images": len(index["images"])}
    barrier()
    return result
