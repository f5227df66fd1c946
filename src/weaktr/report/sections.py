"""The report's sections: each draws its figures from the run's artefacts and returns what its template shows.

A section that lacks its inputs returns None and says what is missing in the page's absent list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weaktr.config import RunConfig
from weaktr.data.images import load_image
from weaktr.data.info import DatasetInfo
from weaktr.data.sampling import present_ids, spread
from weaktr.report import figures
from weaktr.report.artefacts import (
    gt_of,
    label_png,
    per_class_iou,
    read_log,
    read_view,
    read_views_index,
    rel,
)
from weaktr.report.curves import log_panels
from weaktr.runtime.layout import RunLayout, nocrf_dir

# Summary rows in pipeline order: key in summary.json / metrics/<key>.json -> what it is.
STAGE_LABELS: dict[str, str] = {
    "cam_coarse": "coarse CAM",
    "cam_fine": "fine CAM (the CAM turned into seeds)",
    "cam_refined": "fine CAM with patch-attention refinement",
    "cam_fused": "fine CAM without patch-attention refinement",
    "seeds": "seeds",
    "seeds_crf": "seeds + label CRF",
    "pseudo_masks_nocrf": "pseudo masks before CRF",
    "pseudo_masks": "pseudo masks (segmenter on train)",
    "segmenter_nocrf": "segmenter before CRF",
    "segmenter": "segmenter",
}
ALWAYS_LISTED = ("cam_coarse", "cam_fine", "seeds", "pseudo_masks", "segmenter")  # others only when present
CAM_COLUMNS = (
    "image",
    "GT",
    "coarse CAM",
    "cross-attention",
    "patch attn. at ★",
    "fine CAM (PA-refined)",
    "fused CAM (no PA)",
    "seed",
    "seed + CRF",
    "pseudo mask",
)
CAM_MAPS = ("coarse", "cross", "patch", "fine", "fused")  # the views' maps, in CAM_COLUMNS order


@dataclass(frozen=True)
class Figure:
    """A PNG beside index.html, as the template links it."""

    src: str
    alt: str


@dataclass(frozen=True)
class Section:
    """One <section> of the page: its anchor, title, template (under templates/) and values."""

    anchor: str
    title: str
    template: str
    data: dict[str, Any]

    @property
    def nav(self) -> str:
        """The title without its parenthesis, for the navigation bar."""
        return self.title.split(" (")[0]


@dataclass
class Page:
    """What one build has: the run, its config and data set, the figures drawn and what was absent."""

    lay: RunLayout
    cfg: RunConfig | None
    dataset: DatasetInfo | None
    n: int
    palette: list[int]
    absent: list[str] = field(default_factory=list)
    written: set[str] = field(default_factory=set)

    def figure(self, name: str, alt: str) -> Figure:
        """The link to ``report_figure(name)`` (already drawn), remembered so stale figures can be removed."""
        src = self.lay.report_figure(name).name
        self.written.add(src)
        return Figure(src, alt)


def summary(
    page: Page,
    scores: dict[str, Any],
    seconds: dict[str, float],
    total: float | None,
    metrics: dict[str, dict[str, Any]],
) -> Section:
    """mIoU per artefact with the images each score used, the run's time and the GT-based choices."""
    cfg = page.cfg
    train = cfg.data.cam_eval_split_or_train if cfg else "train"
    val = cfg.data.val_split if cfg else "val"
    split_of = {k: train for k in STAGE_LABELS} | {"segmenter": val, "segmenter_nocrf": val}
    rows, sampled = [], []
    for key in [*STAGE_LABELS, *sorted(set(scores) - set(STAGE_LABELS))]:
        if key not in scores and key not in ALWAYS_LISTED:
            continue
        row: dict[str, Any] = {"label": STAGE_LABELS.get(key, key), "key": key, "miou": None}
        if key in scores:
            s, m = scores[key], metrics.get(key, {})
            images, of = s.get("images", m.get("images")), s.get("sampled_from", m.get("sampled_from"))
            row |= {
                "split": split_of.get(key, ""),
                "miou": float(s["miou"]),
                "images": "–" if images is None else f"{images} of {of}" if of else str(images),
                "details": [
                    (k, v)
                    for k, v in s.items()
                    if k not in ("miou", "images", "sampled_from") and isinstance(v, int | float)
                ],
            }
            if of:
                sampled.append(key)
        rows.append(row)
    return Section(
        "summary",
        "Summary (mIoU per stage)",
        "summary.html.j2",
        {
            "rows": rows,
            "sampled": sampled,
            "total": total,
            "seconds": seconds,
            "gt_choices": gt_choices(cfg) if cfg else None,
        },
    )


def gt_choices(cfg: RunConfig) -> list[str]:
    """What the run selected with pixel labels, which a truly weakly-supervised run would not have."""
    split = cfg.data.cam_eval_split_or_train
    items = []
    if cfg.seeds.threshold_from == "gt_sweep":
        items.append(f"the seed threshold was swept against the GT of split '{split}'")
    else:
        t = cfg.seeds.threshold
        items.append(f"the seed threshold is fixed at {t:.2f} in the config (not swept in this run)")
    if cfg.cam_train.select_checkpoint == "gt_miou":
        items.append(f"the CAM checkpoint is the epoch with the best CAM mIoU on '{split}'")
    if cfg.seg_train.select_checkpoint == "gt_val":
        items.append("the segmenter checkpoint is the epoch with the best val mIoU")
    items.append("the CAM rows report the best threshold of a GT sweep (for comparison only)")
    items.extend(f"declared in the config: {c}" for c in cfg.report.gt_choices)
    return items


def iou(page: Page, metrics: dict[str, dict[str, Any]]) -> Section | None:
    """Per-class IoU bars of every scored artefact, with the table behind them."""
    if not metrics:
        page.absent.append(f"{rel(page.lay, page.lay.metrics_dir)}*.json (per-class scores)")
        return None
    order = {k: i for i, k in enumerate(STAGE_LABELS)}
    names = sorted(metrics, key=lambda k: (order.get(k, len(order)), k))
    per_class = {k: per_class_iou(metrics[k]) for k in names}
    figures.iou_bars(per_class, page.lay.report_figure("iou"))
    classes = list(dict.fromkeys(c for v in per_class.values() for c in v))
    table = [(c, [v.get(c, float("nan")) for v in per_class.values()]) for c in classes]
    return Section(
        "iou",
        "Per-class IoU",
        "iou.html.j2",
        {"figure": page.figure("iou", "per-class IoU"), "names": names, "table": table},
    )


def legend(page: Page, dataset: DatasetInfo) -> Section:
    """The colour of every class in the label-map figures."""
    pal = page.palette
    items = [
        (f"rgb({pal[3 * i]},{pal[3 * i + 1]},{pal[3 * i + 2]})", f"{i} {name}")
        for i, name in enumerate(dataset.class_names)
        if not name.startswith("unused")
    ]
    items.append((f"rgb({pal[765]},{pal[766]},{pal[767]})", "255 ignore"))
    return Section("classes", f"Classes of '{dataset.name}'", "legend.html.j2", {"entries": items})


def cams(page: Page, dataset: DatasetInfo) -> list[Section]:
    """The views stage's maps beside the seeds and pseudo masks (Fig. A10), and the mean AAF weights."""
    lay = page.lay
    index = read_views_index(lay, page.absent)
    if index is None:
        return []
    present = {e.image_id: e for e in index.images if dataset.image_path(e.image_id).is_file()}
    entries = [present[i] for i in spread(list(present), page.n)]
    if not entries:
        page.absent.append(f"images of the views in {rel(lay, lay.views)}: no CAM figure, no AAF weights")
        return []
    split = index.split
    label_dirs = (lay.seeds(False), lay.seeds(True), lay.pred(split))
    for folder, what in zip(label_dirs, ("seeds", "seeds + CRF", "pseudo masks"), strict=True):
        if not folder.is_dir():
            page.absent.append(f"{rel(lay, folder)} ({what}): empty column in the CAM figure")
    rows, titles, markers, aaf = [], [], [], []
    for e in entries:
        view = read_view(lay, e.image_id, page.absent)
        if view is None:
            continue
        maps, weights = view
        image = load_image(dataset.image_path(e.image_id))
        labels = [gt_of(dataset, e.image_id), *(label_png(d / f"{e.image_id}.png") for d in label_dirs)]
        gt, seed, seed_crf, pseudo = (
            None if m is None else figures.colorize(m, page.palette) for m in labels
        )
        rows.append([image, gt, *(figures.overlay(image, maps[k]) for k in CAM_MAPS), seed, seed_crf, pseudo])
        name = dataset.class_names[e.label_id] if e.label_id < len(dataset.class_names) else str(e.label_id)
        titles.append(f"{e.image_id}\n{name}")
        markers.append(e.query)
        aaf.append(weights)
    if not rows:
        return []
    figures.image_grid(rows, CAM_COLUMNS, lay.report_figure("cams"), titles, markers, marker_col=4)
    figures.aaf_heatmap(np.mean(aaf, axis=0), index.depth, index.num_heads, lay.report_figure("aaf"))
    used = "fine CAM (PA-refined)" if index.refine else "fused CAM (no PA)"
    return [
        Section(
            "cams",
            f"CAMs, attention and seeds ({split})",
            "cams.html.j2",
            {
                "split": split,
                "used": used,
                "refine": index.refine,
                "figure": page.figure("cams", "CAM overlays"),
            },
        ),
        Section(
            "aaf",
            "Adaptive attention fusion weights",
            "aaf.html.j2",
            {
                "depth": index.depth,
                "heads": index.num_heads,
                "images": len(rows),
                "fusion": index.fusion,
                "figure": page.figure("aaf", "AAF weights"),
            },
        ),
    ]


def examples(page: Page, cfg: RunConfig, dataset: DatasetInfo) -> Section | None:
    """The segmenter's predictions of report.split beside the GT (and before the CRF when kept)."""
    split = cfg.report.split
    pred_dir = page.lay.pred(split)
    if not pred_dir.is_dir():
        page.absent.append(f"{rel(page.lay, pred_dir)} (predictions of split '{split}')")
        return None
    ids = spread(present_ids(dataset, split), page.n)
    nocrf = nocrf_dir(pred_dir)
    cols = ["image", "GT", "prediction"] + (["before CRF"] if nocrf.is_dir() else [])
    rows = []
    for image_id in ids:
        maps = [gt_of(dataset, image_id), label_png(pred_dir / f"{image_id}.png")]
        if nocrf.is_dir():
            maps.append(label_png(nocrf / f"{image_id}.png"))
        colour = [None if m is None else figures.colorize(m, page.palette) for m in maps]
        rows.append([load_image(dataset.image_path(image_id)), *colour])
    if not rows:
        page.absent.append(f"images of split '{split}'")
        return None
    figures.image_grid(rows, cols, page.lay.report_figure("examples"), ids, cell_inches=2.0)
    return Section(
        "examples",
        f"Segmenter predictions ({split})",
        "examples.html.j2",
        {"split": split, "images": len(rows), "figure": page.figure("examples", "predictions")},
    )


def data(page: Page, cfg: RunConfig, dataset: DatasetInfo) -> Section | None:
    """Sample images with their masks and image-level labels, so a reader can judge how hard the data are."""
    split, per_row = cfg.data.train_split, 4
    ids = spread(present_ids(dataset, split), per_row * max(2, -(-page.n // per_row)))
    if not ids or dataset.masks is None:
        return None
    labels = dataset.labels()
    rows: list[list[np.ndarray | None]] = []
    titles: list[list[str]] = []
    for k in range(0, len(ids), per_row):
        row: list[np.ndarray | None] = []
        row_titles: list[str] = []
        for image_id in ids[k : k + per_row]:
            gt = gt_of(dataset, image_id)
            row += [
                load_image(dataset.image_path(image_id)),
                None if gt is None else figures.colorize(gt, page.palette),
            ]
            names = ", ".join(dataset.class_names[c] for c in labels.get(image_id, [])) or "background only"
            row_titles += [f"{image_id}: {names}", "mask"]
        rows.append(row)
        titles.append(row_titles)
    path = page.lay.report_figure("data")
    figures.image_grid(rows, ["image", "mask"] * per_row, path, cell_inches=1.7, cell_titles=titles)
    return Section(
        "data", f"Data samples ({split})", "data.html.j2", {"figure": page.figure("data", "data samples")}
    )


def curves(page: Page) -> Section | None:
    """The logged losses, learning rates and other numbers of both trainers."""
    lay, figs = page.lay, []
    for sub, path, title in (
        ("cam", lay.cam_log, "phase 1: CAM network"),
        ("seg", lay.seg_log, "phase 2: segmenter"),
    ):
        if not path.is_file():
            page.absent.append(f"{rel(lay, path)} (training curves of the {title})")
            continue
        panels = log_panels(read_log(path))
        if not panels:
            page.absent.append(f"numbers in {rel(lay, path)}")
            continue
        figures.curve_panels(panels, lay.report_figure(f"curves_{sub}"), title)
        figs.append(page.figure(f"curves_{sub}", f"{title} curves"))
    return Section("curves", "Training curves", "curves.html.j2", {"figures": figs}) if figs else None
