"""Reading a run directory for the report: config, data set, scores, stage markers, logs and views.

Every reader tolerates what a half-finished, killed or partly deleted run leaves behind: it returns
nothing and notes what is missing in ``absent`` (the page's "Not in this run directory" list), so the
report shows what is there. Nothing here builds or loads a model.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weaktr.config import RunConfig, load_config
from weaktr.data.images import load_label_map
from weaktr.data.info import DatasetInfo
from weaktr.errors import InputError
from weaktr.io import load_views, read_json
from weaktr.runtime.context import run_dataset
from weaktr.runtime.layout import RunLayout

log = logging.getLogger(__name__)


def rel(lay: RunLayout, path: Path) -> str:
    """A run-directory path as the page names it: folders (no suffix) end in '/' (``seeds/``)."""
    name = str(path.relative_to(lay.root))
    return f"{name}/" if not path.suffix else name


def read_config(lay: RunLayout, absent: list[str]) -> tuple[RunConfig | None, str | None]:
    """The merged config and its text; without it there is no data set, so no image figures."""
    if not lay.config.is_file():
        absent.append(f"{rel(lay, lay.config)} (the merged config): no data set, so no image figures")
        return None, None
    text = lay.config.read_text()
    try:
        return load_config(lay.config), text
    except InputError as exc:
        absent.append(f"a readable {rel(lay, lay.config)} ({exc}): no image figures")
        return None, text


def read_dataset(cfg: RunConfig, lay: RunLayout, absent: list[str]) -> DatasetInfo | None:
    try:
        return run_dataset(lay.root, cfg.data.dataset)
    except InputError as exc:
        absent.append(f"the data set of the run ({exc}): no image figures")
        return None


def _is_score(value: Any) -> bool:
    return isinstance(value, dict) and "miou" in value


def read_scores(lay: RunLayout, absent: list[str]) -> tuple[dict[str, Any], dict[str, float], Any]:
    """(scores by artefact, seconds by stage, total seconds or None) from summary.json and the markers.

    The stage markers win: they are fresher than summary.json while a run is going.
    """
    summary: dict[str, Any] = {}
    if lay.summary.is_file():
        try:
            data = read_json(lay.summary)
        except InputError as exc:
            absent.append(f"a readable {rel(lay, lay.summary)} ({exc})")
            data = {}
        summary = data if isinstance(data, dict) else {}
    scores: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for marker in sorted(lay.stages.glob("*.json")):
        try:
            data = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("seconds"), int | float):
            seconds[marker.stem] = float(data["seconds"])
        scores |= {k: v for k, v in (data.get("result") or {}).items() if _is_score(v)}
    if not summary and not scores:
        absent.append(f"{rel(lay, lay.summary)} and {rel(lay, lay.stages)}*.json (no stage has finished)")
    scores = {**{k: v for k, v in summary.items() if _is_score(v)}, **scores}
    seconds = {**(summary.get("stage_seconds") or {}), **seconds}
    total = summary.get("seconds", sum(seconds.values()) if seconds else None)
    return scores, seconds, total if isinstance(total, int | float) else None


def read_metrics(lay: RunLayout, absent: list[str]) -> dict[str, dict[str, Any]]:
    """Every readable ``metrics/<name>.json`` that holds per-class scores, by name."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(lay.metrics_dir.glob("*.json")):
        try:
            data = read_json(path)
            if isinstance(data, dict) and "iou" not in data:
                continue  # not a score file (the seed threshold sweep)
            if not isinstance(data["class_names"], list) or not isinstance(data["iou"], list):
                raise TypeError
        except (InputError, KeyError, TypeError):
            absent.append(f"a readable {rel(lay, path)}")
            continue
        out[path.stem] = data
    return out


def per_class_iou(metrics: dict[str, Any]) -> dict[str, float]:
    """{class name: IoU} of one metrics file, without classes that no pixel had (NaN / null)."""
    return {
        str(c): float(v)
        for c, v in zip(metrics["class_names"], metrics["iou"], strict=False)
        if v is not None and not math.isnan(float(v))
    }


def label_png(path: Path) -> np.ndarray | None:
    """A label map if the file exists and reads; figures show 'not available' otherwise."""
    if not path.is_file():
        return None
    try:
        return load_label_map(path)
    except InputError as exc:
        log.warning("report: skipping %s", exc)
        return None


def gt_of(dataset: DatasetInfo, image_id: str) -> np.ndarray | None:
    return label_png(dataset.mask_path(image_id)) if dataset.masks is not None else None


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log, nested keys flattened; a torn last line (killed run) is skipped."""
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


@dataclass(frozen=True)
class ViewEntry:
    """One sample image of the views stage: its id, the class shown and the query point (y, x)."""

    image_id: str
    label_id: int
    query: tuple[float, float]


@dataclass(frozen=True)
class ViewsIndex:
    """``views/index.json``: the sample images and the layout of the CAM network that drew them."""

    split: str
    refine: bool
    fusion: str
    depth: int
    num_heads: int
    images: list[ViewEntry]


def read_views_index(lay: RunLayout, absent: list[str]) -> ViewsIndex | None:
    """The views stage's index, or None (noted as absent) for a run without it or with a damaged one."""
    path = lay.views_index
    if not path.is_file():
        absent.append(
            f"{rel(lay, path)} (CAM and attention views of the sample images, written by the views "
            "stage; weaktr run on this run directory adds them): no CAM figure, no AAF weights"
        )
        return None
    try:
        data = read_json(path)
        return ViewsIndex(
            split=str(data["split"]),
            refine=bool(data["refine"]),
            fusion=str(data["fusion"]),
            depth=int(data["depth"]),
            num_heads=int(data["num_heads"]),
            images=[
                ViewEntry(str(e["id"]), int(e["class"]), (float(e["query"][0]), float(e["query"][1])))
                for e in data["images"]
            ],
        )
    except (InputError, KeyError, TypeError, ValueError, IndexError) as exc:
        absent.append(f"a readable {rel(lay, path)} ({exc}): no CAM figure, no AAF weights")
        return None


def read_view(
    lay: RunLayout, image_id: str, absent: list[str]
) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """One image's maps and AAF weights, or None (noted as absent) when the file is missing or damaged."""
    try:
        return load_views(lay.view(image_id))
    except InputError as exc:
        absent.append(f"a readable {rel(lay, lay.view(image_id))} ({exc}): its row is left out")
        return None
