"""The visual report of a run directory: one self-contained ``report/index.html`` with PNG figures.

It reads whatever the run has produced so far — a report of a half-finished or partly deleted run
shows what is there and names what is absent — and never trains or writes outside ``report/``.
The CAM figure reruns the saved CAM network at scale 1.0 on a few train images to show every
intermediate map of the paper's Fig. A10 (coarse CAM, cross-attention, patch attention at a query
point, fine CAM with and without the patch-attention refinement) beside the seeds and pseudo masks.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from weaktr.config import RunConfig, load_config
from weaktr.data.images import load_image, load_label_map
from weaktr.data.info import DatasetInfo
from weaktr.data.palette import voc_palette
from weaktr.errors import InputError
from weaktr.io import atomic_write, read_json
from weaktr.models.cam import CAMNet, load_cam_model
from weaktr.models.timm_factory import normalisation, normalise
from weaktr.report import figures
from weaktr.runtime.context import run_dataset
from weaktr.runtime.logging import format_seconds

log = logging.getLogger(__name__)

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
STEP_KEYS = ("step", "global_step", "iteration", "iter", "it", "epoch")
MAX_PANELS = 12

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222;
       background: #fafafa; line-height: 1.45; }
header { background: #253041; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c8d0dc; font-size: 13px; }
nav { padding: 8px 32px; background: #e9edf2; font-size: 13px; position: sticky; top: 0; }
nav a { margin-right: 14px; color: #253041; text-decoration: none; }
main { padding: 8px 32px 40px; max-width: 1500px; }
section { background: #fff; border: 1px solid #e1e4e8; border-radius: 6px; padding: 6px 20px 16px;
          margin: 18px 0; }
h2 { font-size: 18px; border-bottom: 1px solid #eee; padding-bottom: 4px; }
p.note { color: #555; font-size: 13px; max-width: 1000px; }
p.missing { color: #8a5300; background: #fff8e6; border-left: 3px solid #f0b400; padding: 4px 10px;
            font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 10px; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 4px 10px; text-align: left; }
th { background: #f3f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.absent { color: #999; }
img.fig { max-width: 100%; height: auto; border: 1px solid #eee; margin: 6px 0; }
pre { background: #f6f8fa; padding: 10px; font-size: 12px; overflow-x: auto; }
.legend span { display: inline-block; margin: 2px 12px 2px 0; font-size: 13px; }
.legend i { display: inline-block; width: 14px; height: 14px; margin-right: 5px;
            vertical-align: -2px; border: 1px solid #999; }
ul.absent li { font-size: 13px; color: #555; }
"""


@dataclass
class _Page:
    """The sections being assembled, the figures written and what was not found."""

    out: Path
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (anchor, title, body html)
    absent: list[str] = field(default_factory=list)
    written: set[str] = field(default_factory=set)

    def add(self, anchor: str, title: str, body: str) -> None:
        self.sections.append((anchor, title, body))

    def figure(self, name: str, alt: str) -> str:
        """An <img> of ``out/name`` (already written), remembered so stale figures can be removed."""
        self.written.add(name)
        return f'<img class="fig" src="{html.escape(name)}" alt="{html.escape(alt)}">'


def build_report(
    run_dir: str | Path, n_examples: int | None = None, device: torch.device | str = "cpu"
) -> Path:
    """Write ``run_dir/report/index.html`` and its figures from what the run directory holds.

    ``n_examples`` (default: the config's ``report.n_examples``) is the number of sample images per
    figure; ``device`` runs the CAM network for the CAM figure. Returns the path of ``index.html``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError("run directory not found", run_dir)
    page = _Page(out=run_dir / "report")
    page.out.mkdir(parents=True, exist_ok=True)
    cfg, config_text = _run_config(run_dir, page)
    n = n_examples if n_examples is not None else (cfg.report.n_examples if cfg else 8)
    dataset = _dataset(cfg, run_dir, page) if cfg else None
    palette = voc_palette()

    _summary_section(run_dir, cfg, page)
    _iou_section(run_dir, page)
    if dataset is not None:
        _legend_section(dataset, palette, page)
        _cam_section(run_dir, cfg, dataset, n, palette, torch.device(device), page)
        _examples_section(run_dir, cfg, dataset, n, palette, page)
        _data_section(dataset, cfg, n, palette, page)
    _curves_section(run_dir, page)
    _config_section(config_text, page)

    index = page.out / "index.html"
    with atomic_write(index) as tmp:
        tmp.write_text(_render(run_dir, cfg, page), encoding="utf-8")
    for stale in page.out.glob("*.png"):  # figures of sections that this build could not draw
        if stale.name not in page.written:
            stale.unlink()
    return index


# ---- inputs ----------------------------------------------------------------------------------------
def _run_config(run_dir: Path, page: _Page) -> tuple[RunConfig | None, str | None]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        page.absent.append("config.yaml (the merged config): no data set, so no image figures")
        return None, None
    text = path.read_text()
    try:
        return load_config(path), text
    except InputError as exc:
        page.absent.append(f"a readable config.yaml ({exc}): no image figures")
        return None, text


def _dataset(cfg: RunConfig, run_dir: Path, page: _Page) -> DatasetInfo | None:
    try:
        return run_dataset(run_dir, cfg.data.dataset)
    except InputError as exc:
        page.absent.append(f"the data set of the run ({exc}): no image figures")
        return None


def _sample(ids: Sequence[str], n: int) -> list[str]:
    """``n`` ids spread evenly over the list (deterministic, not just the first few)."""
    if n <= 0 or not ids:
        return []
    if len(ids) <= n:
        return list(ids)
    return [ids[int(i)] for i in np.linspace(0, len(ids) - 1, n).round()]


def _split_ids(dataset: DatasetInfo, split: str) -> list[str]:
    """The ids of ``split`` whose image exists (none when the split is unknown)."""
    try:
        ids = dataset.ids(split, check_images=False)
    except InputError:
        return []
    return [i for i in ids if dataset.image_path(i).is_file()]


def _label_png(path: Path) -> np.ndarray | None:
    """A label map if the file exists and reads; figures show 'not available' otherwise."""
    if not path.is_file():
        return None
    try:
        return load_label_map(path)
    except InputError as exc:
        log.warning("report: skipping %s", exc)
        return None


def _gt(dataset: DatasetInfo, image_id: str) -> np.ndarray | None:
    return _label_png(dataset.mask_path(image_id)) if dataset.masks is not None else None


def _stage_results(run_dir: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """Scores and seconds from the stage markers (fresher than summary.json while a run is going)."""
    scores: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for marker in sorted((run_dir / "stages").glob("*.json")):
        try:
            data = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data.get("seconds"), int | float):
            seconds[marker.stem] = float(data["seconds"])
        for key, value in (data.get("result") or {}).items():
            if isinstance(value, dict) and "miou" in value:
                scores[key] = value
    return scores, seconds


# ---- sections --------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return html.escape(str(value))


def _summary_section(run_dir: Path, cfg: RunConfig | None, page: _Page) -> None:
    summary: dict[str, Any] = {}
    if (run_dir / "summary.json").is_file():
        data = read_json(run_dir / "summary.json")
        summary = data if isinstance(data, dict) else {}
    scores, stage_seconds = _stage_results(run_dir)
    if not summary and not scores:
        page.absent.append("summary.json and stages/*.json (no stage has finished)")
    scores = {**{k: v for k, v in summary.items() if isinstance(v, dict) and "miou" in v}, **scores}
    stage_seconds = {**(summary.get("stage_seconds") or {}), **stage_seconds}
    train = (cfg.data.cam_eval_split or cfg.data.train_split) if cfg else "train"
    val = cfg.data.val_split if cfg else "val"
    split_of = {k: train for k in STAGE_LABELS} | {"segmenter": val, "segmenter_nocrf": val}

    rows = []
    for key in [*STAGE_LABELS, *sorted(set(scores) - set(STAGE_LABELS))]:
        if key not in scores and key not in ("cam_coarse", "cam_fine", "seeds", "pseudo_masks", "segmenter"):
            continue  # optional artefacts are listed only when present
        label = STAGE_LABELS.get(key, key)
        if key not in scores:
            rows.append(
                f'<tr><td>{html.escape(label)}</td><td>{key}</td><td class="absent" colspan="3">'
                "not evaluated in this run</td></tr>"
            )
            continue
        s = scores[key]
        extra = ", ".join(
            f"{k} {_fmt(v)}" for k, v in s.items() if k not in ("miou",) and isinstance(v, int | float)
        )
        rows.append(
            f"<tr><td>{html.escape(label)}</td><td>{key}</td><td>{html.escape(split_of.get(key, ''))}</td>"
            f'<td class="num"><b>{_fmt(float(s["miou"]))}</b></td><td>{extra}</td></tr>'
        )
    body = (
        "<table><tr><th>artefact</th><th>key</th><th>split</th><th>mIoU</th><th>details</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    total = summary.get("seconds", sum(stage_seconds.values()) if stage_seconds else None)
    if isinstance(total, int | float):
        body += f"<p>Total time: <b>{format_seconds(float(total))}</b>"
        if stage_seconds:
            body += " (" + ", ".join(f"{k} {format_seconds(v)}" for k, v in stage_seconds.items()) + ")"
        body += "</p>"
    if cfg is not None:
        body += "<p class='note'>Choices made with ground truth: " + _gt_choices(cfg) + "</p>"
    page.add("summary", "Summary (mIoU per stage)", body)


def _gt_choices(cfg: RunConfig) -> str:
    """What the run selected with pixel labels, which a truly weakly-supervised run would not have."""
    split = cfg.data.cam_eval_split or cfg.data.train_split
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
    items.extend(f"declared in the config: {html.escape(c)}" for c in cfg.report.gt_choices)
    return "; ".join(items) + "."


def _iou_section(run_dir: Path, page: _Page) -> None:
    files = sorted((run_dir / "metrics").glob("*.json"))
    if not files:
        page.absent.append("metrics/*.json (per-class scores)")
        return
    order = {k: i for i, k in enumerate(STAGE_LABELS)}
    files.sort(key=lambda p: (order.get(p.stem, len(order)), p.stem))
    per_class: dict[str, dict[str, float]] = {}
    for path in files:
        try:
            data = read_json(path)
            names, ious = data["class_names"], data["iou"]
        except (InputError, KeyError, TypeError):
            page.absent.append(f"a readable {path.relative_to(run_dir)}")
            continue
        per_class[path.stem] = {
            str(c): float(v)
            for c, v in zip(names, ious, strict=False)
            if v is not None and not math.isnan(float(v))
        }
    if not per_class:
        return
    figures.iou_bars(per_class, page.out / "iou.png")
    classes = list(dict.fromkeys(c for v in per_class.values() for c in v))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in per_class)
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td>"
        + "".join(f'<td class="num">{_fmt(v.get(c, math.nan))}</td>' for v in per_class.values())
        + "</tr>"
        for c in classes
    )
    body = (
        page.figure("iou.png", "per-class IoU")
        + "<p class='note'>Classes without any ground-truth or predicted pixel are left out.</p>"
        + f"<details><summary>Per-class IoU table</summary><table><tr><th>class</th>{head}</tr>{rows}"
        "</table></details>"
    )
    page.add("iou", "Per-class IoU", body)


def _legend_section(dataset: DatasetInfo, palette: list[int], page: _Page) -> None:
    spans = []
    for i, name in enumerate(dataset.class_names):
        if name.startswith("unused"):
            continue
        r, g, b = palette[3 * i : 3 * i + 3]
        spans.append(f'<span><i style="background:rgb({r},{g},{b})"></i>{i} {html.escape(name)}</span>')
    spans.append(
        f'<span><i style="background:rgb({",".join(map(str, palette[765:768]))})"></i>255 ignore</span>'
    )
    page.add(
        "classes", f"Classes of '{html.escape(dataset.name)}'", f'<div class="legend">{"".join(spans)}</div>'
    )


@dataclass
class _CamViews:
    """Display maps of one image and class, each (H, W) in [0, 1], and the query point (y, x)."""

    coarse: np.ndarray
    cross: np.ndarray
    patch: np.ndarray
    fine: np.ndarray
    fused: np.ndarray
    query: tuple[float, float]
    aaf: np.ndarray


def _minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min() + 1e-8)


@torch.no_grad()
def cam_views(model: CAMNet, image: np.ndarray, label_id: int, device: torch.device) -> _CamViews:
    """Every intermediate map of ``label_id`` at scale 1.0, upsampled to the image and min–max scaled.

    The patch attention is the row of the fused patch attention of the query patch, which is the
    argmax of the refined fine CAM (where the refinement draws its evidence from).
    """
    x = normalise(image, *normalisation(model.config.backbone))[None].to(device)
    out = model(x)
    c = label_id - 1
    H, W = image.shape[:2]
    h, w = out.fine_cam.shape[-2:]
    q = int(out.fine_cam[0, c].flatten().argmax())
    qy, qx = divmod(q, w)

    def up(m: torch.Tensor) -> np.ndarray:
        m = F.interpolate(m.float()[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
        return _minmax(m).cpu().numpy()

    return _CamViews(
        coarse=up(F.relu(out.coarse_cam[0, c])),
        cross=up(out.cross_attn[0, c]),
        patch=up(out.patch_attn[0, q].reshape(h, w)),
        fine=up(out.fine_cam[0, c]),
        fused=up(out.fused_cam[0, c]),
        query=((qy + 0.5) * H / h, (qx + 0.5) * W / w),
        aaf=out.aaf_weights[0].float().cpu().numpy(),
    )


def _main_class(labels: list[int], gt: np.ndarray | None) -> int:
    """The image's label with the most GT pixels (its first label without GT)."""
    if gt is None or len(labels) == 1:
        return labels[0]
    return max(labels, key=lambda c: int((gt == c).sum()))


def _cam_section(
    run_dir: Path,
    cfg: RunConfig,
    dataset: DatasetInfo,
    n: int,
    palette: list[int],
    device: torch.device,
    page: _Page,
) -> None:
    ckpt = run_dir / "cam" / "model.safetensors"
    if not ckpt.is_file():
        page.absent.append("cam/model.safetensors (the CAM network): no CAM figure, no AAF weights")
        return
    try:
        model = load_cam_model(ckpt, device)
    except InputError as exc:
        page.absent.append(f"a loadable CAM network ({exc}): no CAM figure, no AAF weights")
        return
    split = cfg.data.train_split
    labels = dataset.labels()
    ids = _sample([i for i in _split_ids(dataset, split) if labels.get(i)], n)
    if not ids:
        page.absent.append(f"labelled images of split '{split}': no CAM figure")
        return
    for folder, what in (("seeds", "seeds"), ("seeds_crf", "seeds + CRF"), (f"pred/{split}", "pseudo masks")):
        if not (run_dir / folder).is_dir():
            page.absent.append(f"{folder}/ ({what}): empty column in the CAM figure")
    rows, titles, markers, aaf = [], [], [], []
    for image_id in ids:
        image = load_image(dataset.image_path(image_id))
        gt = _gt(dataset, image_id)
        cls = _main_class(labels[image_id], gt)
        v = cam_views(model, image, cls, device)
        label_maps = [
            gt,
            _label_png(run_dir / "seeds" / f"{image_id}.png"),
            _label_png(run_dir / "seeds_crf" / f"{image_id}.png"),
            _label_png(run_dir / "pred" / split / f"{image_id}.png"),
        ]
        gt_rgb, seed, seed_crf, pseudo = (
            None if m is None else figures.colorize(m, palette) for m in label_maps
        )
        rows.append(
            [
                image,
                gt_rgb,
                figures.overlay(image, v.coarse),
                figures.overlay(image, v.cross),
                figures.overlay(image, v.patch),
                figures.overlay(image, v.fine),
                figures.overlay(image, v.fused),
                seed,
                seed_crf,
                pseudo,
            ]
        )
        name = dataset.class_names[cls] if cls < len(dataset.class_names) else str(cls)
        titles.append(f"{image_id}\n{name}")
        markers.append(v.query)
        aaf.append(v.aaf)
    cols = [
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
    ]
    figures.image_grid(rows, cols, page.out / "cams.png", titles, markers, marker_col=4)
    used = "fine CAM (PA-refined)" if model.config.refine else "fused CAM (no PA)"
    body = (
        f"<p class='note'>Train split '{html.escape(split)}', one class per image (the one with the most "
        "GT pixels), the CAM network run once at scale 1.0 (generation adds more scales and flips). "
        "Maps are min–max scaled per image. The patch attention is the fused patch-to-patch attention "
        "row of the query patch ★, the argmax of the PA-refined fine CAM. "
        f"Seeds are made from the <b>{used}</b> (cam_model.refine = {model.config.refine}).</p>"
        + page.figure("cams.png", "CAM overlays")
    )
    page.add("cams", "CAMs, attention and seeds (train)", body)
    b = model.backbone
    figures.aaf_heatmap(np.mean(aaf, axis=0), b.depth, b.num_heads, page.out / "aaf.png")
    page.add(
        "aaf",
        "Adaptive attention fusion weights",
        f"<p class='note'>The weight of each of the {b.depth}×{b.num_heads} self-attention maps "
        f"(layers × heads) in the fused attention, averaged over the {len(ids)} images above "
        f"(fusion = {html.escape(model.config.fusion)}).</p>" + page.figure("aaf.png", "AAF weights"),
    )


def _examples_section(
    run_dir: Path, cfg: RunConfig, dataset: DatasetInfo, n: int, palette: list[int], page: _Page
) -> None:
    split = cfg.report.split
    pred_dir = run_dir / "pred" / split
    if not pred_dir.is_dir():
        page.absent.append(f"pred/{split}/ (predictions of split '{split}')")
        return
    ids = _sample(_split_ids(dataset, split), n)
    nocrf = pred_dir.parent / f"{split}_nocrf"
    cols = ["image", "GT", "prediction"] + (["before CRF"] if nocrf.is_dir() else [])
    rows = []
    for image_id in ids:
        image = load_image(dataset.image_path(image_id))
        maps = [_gt(dataset, image_id), _label_png(pred_dir / f"{image_id}.png")]
        if nocrf.is_dir():
            maps.append(_label_png(nocrf / f"{image_id}.png"))
        rows.append([image] + [None if m is None else figures.colorize(m, palette) for m in maps])
    if not rows:
        page.absent.append(f"images of split '{split}'")
        return
    figures.image_grid(rows, cols, page.out / "examples.png", ids, cell_inches=2.0)
    page.add(
        "examples",
        f"Segmenter predictions ({html.escape(split)})",
        f"<p class='note'>{len(rows)} images of split '{html.escape(split)}' spread over the list.</p>"
        + page.figure("examples.png", "predictions"),
    )


def _data_section(dataset: DatasetInfo, cfg: RunConfig, n: int, palette: list[int], page: _Page) -> None:
    """Sample images with their masks and image-level labels, so a reader can judge how hard the data are."""
    ids = _sample(_split_ids(dataset, cfg.data.train_split), 4 * max(2, -(-n // 4)))
    if not ids or dataset.masks is None:
        return
    per_row = 4
    labels = dataset.labels()
    rows: list[list[np.ndarray | None]] = []
    titles: list[list[str]] = []
    for k in range(0, len(ids), per_row):
        row: list[np.ndarray | None] = []
        row_titles: list[str] = []
        for image_id in ids[k : k + per_row]:
            gt = _gt(dataset, image_id)
            row += [
                load_image(dataset.image_path(image_id)),
                None if gt is None else figures.colorize(gt, palette),
            ]
            names = ", ".join(dataset.class_names[c] for c in labels.get(image_id, [])) or "background only"
            row_titles += [f"{image_id}: {names}", "mask"]
        rows.append(row)
        titles.append(row_titles)
    figures.image_grid(
        rows, ["image", "mask"] * per_row, page.out / "data.png", cell_inches=1.7, cell_titles=titles
    )
    page.add(
        "data",
        f"Data samples ({html.escape(cfg.data.train_split)})",
        "<p class='note'>Images spread over the split, with their ground-truth masks and image-level "
        "labels (the only labels training sees).</p>" + page.figure("data.png", "data samples"),
    )


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log; a torn last line (killed run) is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(_flatten(rec))
    return records


def _flatten(rec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def log_panels(records: Sequence[dict[str, Any]]) -> list[figures.Panel]:
    """Panels of the logged numbers: losses together, learning rates together (log scale), others alone.

    Records are grouped by their ``event`` field (the trainers log ``iter`` and ``epoch`` lines); each
    group is plotted against the first of :data:`STEP_KEYS` that all its records carry. A key is drawn
    once, from its most frequent group (per-epoch means repeat the per-iteration losses), and series
    that never change (batch size, iterations per epoch) are left out.
    """
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for rec in records:
        event = rec.get("event")
        groups.setdefault(event if isinstance(event, str) else None, []).append(rec)
    panels: dict[str, figures.Panel] = {}
    drawn: set[str] = set()
    for event, recs in sorted(groups.items(), key=lambda g: -len(g[1])):
        keys = dict.fromkeys(k for r in recs for k, v in r.items() if _is_number(v) and k not in STEP_KEYS)
        for key in keys:
            rows = [r for r in recs if _is_number(r.get(key))]
            ys = [float(r[key]) for r in rows]
            if key in drawn or len(ys) < 2 or min(ys) == max(ys):
                continue
            drawn.add(key)
            xkey = next((s for s in STEP_KEYS if all(_is_number(r.get(s)) for r in rows)), None)
            xs = [float(r[xkey]) for r in rows] if xkey else []
            if not xs or any(b < a for a, b in pairwise(xs)):
                xkey, xs = "log line", [float(i) for i in range(len(rows))]
            leaf = key.rsplit(".", 1)[-1]
            if "loss" in key or leaf in ("total", "cls", "coarse", "fine"):
                kind, title, log_y = "loss", "losses", False
            elif leaf == "lr" or leaf.startswith("lr_") or leaf.endswith("_lr"):
                kind, title, log_y = "lr", "learning rate", True
            else:
                kind, title, log_y = key, key, False
            if event is not None:
                title += f" · {event}"
            panel = panels.setdefault(f"{kind}/{event}/{xkey}", figures.Panel(title, xkey, log_y=log_y))
            panel.series[key] = (xs, ys)
    rank = {"losses": 0, "learning rate": 1}
    return sorted(panels.values(), key=lambda p: rank.get(p.title.split(" · ")[0], 2))[:MAX_PANELS]


def _curves_section(run_dir: Path, page: _Page) -> None:
    body = ""
    for sub, title in (("cam", "phase 1: CAM network"), ("seg", "phase 2: segmenter")):
        path = run_dir / sub / "log.jsonl"
        if not path.is_file():
            page.absent.append(f"{sub}/log.jsonl (training curves of the {title})")
            continue
        panels = log_panels(read_log(path))
        if not panels:
            page.absent.append(f"numbers in {sub}/log.jsonl")
            continue
        figures.curve_panels(panels, page.out / f"curves_{sub}.png", title)
        body += page.figure(f"curves_{sub}.png", f"{title} curves")
    if body:
        page.add("curves", "Training curves", body)


def _config_section(config_text: str | None, page: _Page) -> None:
    if config_text is None:
        return
    page.add("config", "Config (config.yaml)", f"<pre>{html.escape(config_text)}</pre>")


def _render(run_dir: Path, cfg: RunConfig | None, page: _Page) -> str:
    name = cfg.name if cfg else run_dir.name
    if page.absent:
        items = "".join(f"<li>{html.escape(a)}</li>" for a in page.absent)
        page.add("absent", "Not in this run directory", f'<ul class="absent">{items}</ul>')
    nav = "".join(f'<a href="#{a}">{html.escape(t.split(" (")[0])}</a>' for a, t, _ in page.sections)
    sections = "".join(
        f'<section id="{a}"><h2>{html.escape(t)}</h2>{b}</section>' for a, t, b in page.sections
    )
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>WeakTr report: {html.escape(name)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>WeakTr report: {html.escape(name)}</h1>"
        f"<p>{html.escape(str(run_dir.resolve()))} · built {stamp}</p></header>"
        f"<nav>{nav}</nav><main>{sections}</main></body></html>\n"
    )
