"""A built-in synthetic data set, rendered on the fly, so the whole pipeline runs with no download.

Each image holds 1–3 objects on a cluttered background. Every class has its own shape, texture and
colour family (jittered hue, size, rotation); background clutter (smooth colour noise, stripes, soft
blobs) uses random hues, so colour alone is not enough to separate classes from background. Objects are
painted in order, later ones occluding earlier ones; a placement that would leave any object with less
than ~1 % of the image (or less than a third of itself) visible is re-drawn, so image labels are exactly
the ids in the mask. Every image has its own RNG seeded by (seed, index): the output is identical for any
number of workers.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from weaktr.cores import cap_workers
from weaktr.data.check import dataset_items, fingerprint
from weaktr.data.info import DatasetInfo, write_id_list
from weaktr.data.palette import voc_palette
from weaktr.errors import InputError
from weaktr.io import atomic_write, save_label_png, write_json
from weaktr.pools import PerItem, fork_pool

SHAPES = ("disc", "square", "triangle", "ring", "cross", "star", "hexagon", "crescent")
MARKER = ".complete"
_MIN_IMAGE_FRACTION = 0.01
_MIN_SELF_FRACTION = 0.35
_PLACEMENT_TRIES = 12


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (all in [0, 1]) → RGB, shape (..., 3)."""
    h, s, v = np.broadcast_arrays(np.asarray(h, float), np.asarray(s, float), np.asarray(v, float))
    h6 = (h % 1.0) * 6.0
    i = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def _colour(h: float, s: float, v: float) -> np.ndarray:
    return _hsv_to_rgb(np.float64(h), np.float64(s), np.float64(v))


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in the object's rotated unit coordinates (radius 1)."""
    rho = np.hypot(u, v)
    if shape == "disc":
        return rho <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if shape == "triangle":
        inside = np.ones(u.shape, dtype=bool)
        for phi in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= -(u * np.cos(phi) + v * np.sin(phi)) <= 0.58
        return inside
    if shape == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    if shape == "cross":
        return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1.0))
    if shape == "star":
        sector = 2 * np.pi / 5
        t = np.abs(np.mod(np.arctan2(v, u), sector) - sector / 2) / (sector / 2)  # 1 at the tips
        return rho <= 0.42 + 0.63 * t**1.5
    if shape == "hexagon":
        return (
            np.max([np.abs(u * np.cos(a) + v * np.sin(a)) for a in (0, np.pi / 3, 2 * np.pi / 3)], 0) <= 0.88
        )
    if shape == "crescent":
        return (rho <= 1.0) & (np.hypot(u - 0.5, v) >= 0.72)
    raise ValueError(shape)


def _texture(k: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A per-class brightness pattern in [0, 1], in object coordinates so it rotates with the object."""
    f = rng.uniform(2.5, 4.0)
    kind = k % 8
    if kind == 0:  # smooth radial shading
        return np.clip(1.0 - 0.6 * (u * u + v * v), 0, 1)
    if kind == 1:  # stripes
        return (np.sin(u * f * np.pi) > 0).astype(float)
    if kind == 2:  # checkerboard
        return ((np.floor(u * f) + np.floor(v * f)) % 2).astype(float)
    if kind == 3:  # polka dots
        return (((u * f) % 1 - 0.5) ** 2 + ((v * f) % 1 - 0.5) ** 2 > 0.09).astype(float)
    if kind == 4:  # linear gradient
        return np.clip((u + 1) / 2, 0, 1)
    if kind == 5:  # speckle
        return (rng.random(u.shape) > 0.5).astype(float)
    if kind == 6:  # concentric bands
        return (np.sin(np.hypot(u, v) * f * 2 * np.pi) > 0).astype(float)
    return (np.minimum((u * f) % 1, (v * f) % 1) > 0.25).astype(float)  # grid lines


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Cluttered background: smooth colour noise + optional stripes + soft blobs, float (size, size, 3)."""
    S = size
    k = int(rng.integers(2, 7))
    low = _hsv_to_rgb(rng.random((k, k)), rng.uniform(0.1, 0.8, (k, k)), rng.uniform(0.25, 0.9, (k, k)))
    img = (
        np.asarray(
            Image.fromarray((low * 255).astype(np.uint8)).resize((S, S), Image.Resampling.BICUBIC),
            dtype=np.float64,
        )
        / 255.0
    )
    if rng.random() < 0.6:
        a, period = rng.uniform(0, np.pi), rng.uniform(0.06, 0.25) * S
        phase = (xx * np.cos(a) + yy * np.sin(a)) / period
        alpha = rng.uniform(0.2, 0.6) * (np.sin(2 * np.pi * phase) > 0)
        col = _colour(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.3, 0.95))
        img = img * (1 - alpha[..., None]) + col * alpha[..., None]
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0, S, 2)
        sy, sx = rng.uniform(0.05, 0.2, 2) * S
        alpha = rng.uniform(0.4, 0.9) * np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2) / 2)
        col = _colour(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))
        img = img * (1 - alpha[..., None]) + col * alpha[..., None]
    return img


def render_scene(seed: int, index: int, size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of the data set with ``seed``: (uint8 (size, size, 3) RGB, uint8 (size, size) mask)."""
    rng = np.random.default_rng([seed, index])
    S = size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64) + 0.5
    img = _background(rng, S, yy, xx)
    inst = np.full((S, S), -1, dtype=np.int64)
    classes: list[int] = []
    areas: list[int] = []  # drawn size of each object, before later ones occlude it
    min_visible = _MIN_IMAGE_FRACTION * S * S
    for k in rng.integers(0, num_classes, int(rng.integers(1, 4))):
        j = len(classes)  # instance index of this object if it gets drawn
        for _ in range(_PLACEMENT_TRIES):
            r = rng.uniform(0.15, 0.3) * S
            cx, cy = rng.uniform(0.6 * r, S - 0.6 * r, 2)
            th = rng.uniform(0, 2 * np.pi)
            c, s = np.cos(th), np.sin(th)
            u, v = ((xx - cx) * c + (yy - cy) * s) / r, (-(xx - cx) * s + (yy - cy) * c) / r
            m = _shape_mask(SHAPES[k], u, v)
            area = int(m.sum())
            if area < min_visible:
                continue
            trial = np.where(m, j, inst)
            counts = np.bincount(trial[trial >= 0], minlength=j + 1)
            ok = all(
                counts[i] >= min_visible and counts[i] >= _MIN_SELF_FRACTION * areas[i] for i in range(j)
            )
            if ok:
                break
        else:
            continue
        hue = k / num_classes + rng.uniform(-0.04, 0.04)
        base = _colour(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
        dark = base * rng.uniform(0.35, 0.6)
        t = _texture(k, u, v, rng)[..., None]
        img = np.where(m[..., None], dark + (base - dark) * t, img)
        inst = trial
        classes.append(int(k) + 1)
        areas.append(area)
    img = img + rng.normal(0.0, rng.uniform(0.01, 0.05), img.shape)
    mask = np.zeros((S, S), dtype=np.uint8)
    for j, label in enumerate(classes):
        mask[inst == j] = label
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), mask


def _write_one(job: tuple[Path, int, int, int, int, str]) -> list[int]:
    root, seed, index, size, num_classes, image_id = job
    img, mask = render_scene(seed, index, size, num_classes)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    with atomic_write(root / "JPEGImages" / f"{image_id}.jpg") as tmp:
        tmp.write_bytes(buf.getvalue())
    save_label_png(root / "SegmentationClass" / f"{image_id}.png", mask, voc_palette())
    return sorted(int(c) for c in np.unique(mask) if c != 0)


def _demo_item(job: tuple[Path, int, int, int, int, str]) -> str:
    return f"demo image {job[5]}"


_write_item = PerItem(_write_one, _demo_item)  # a failure names the image


def generate_demo(
    out_dir: str | Path,
    n_train: int = 2000,
    n_val: int = 300,
    size: int = 96,
    num_classes: int = 6,
    seed: int = 0,
    workers: int = 1,
) -> DatasetInfo:
    """Render the demo data set into ``out_dir``; skipped when a complete one with these settings is there.

    The marker file is written last, so an interrupted run is simply redone.
    """
    if not 1 <= num_classes <= len(SHAPES):
        raise InputError(f"data.demo.num_classes must be in 1..{len(SHAPES)}, got {num_classes}")
    if n_train < 1 or n_val < 0 or size < 32:
        raise InputError(f"need n_train >= 1, n_val >= 0, size >= 32 (got {n_train}, {n_val}, {size})")
    root = Path(out_dir).resolve()
    params = {
        "n_train": n_train,
        "n_val": n_val,
        "size": size,
        "n_classes": num_classes,  # the marker's key (on disk) stays
        "seed": seed,
        "version": 1,
    }
    marker = root / MARKER
    if marker.is_file() and (root / "dataset.yaml").is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return DatasetInfo.load(root / "dataset.yaml")
        except json.JSONDecodeError:
            pass
    marker.unlink(missing_ok=True)

    ids = [f"{i:06d}" for i in range(n_train + n_val)]
    jobs = [(root, seed, i, size, num_classes, image_id) for i, image_id in enumerate(ids)]
    workers = cap_workers(workers, "demo data workers", level=logging.DEBUG)
    if workers > 1:
        with fork_pool(workers) as pool:
            found = pool.map(_write_item, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
    else:
        found = [_write_item(job) for job in jobs]

    list_dir = root / "ImageSets" / "Segmentation"
    write_id_list(list_dir / "train.txt", ids[:n_train])
    splits = {"train": "ImageSets/Segmentation/train.txt"}
    if n_val:
        write_id_list(list_dir / "val.txt", ids[n_train:])
        splits["val"] = "ImageSets/Segmentation/val.txt"
    write_json(root / "image_labels.json", dict(zip(ids, found, strict=True)))
    info = DatasetInfo(
        name="demo",
        root=root,
        images="JPEGImages",
        image_ext=".jpg",
        masks="SegmentationClass",
        splits=splits,
        image_labels="image_labels.json",
        class_names=["background", *SHAPES[:num_classes]],
        palette="voc",
    )
    info.checked = fingerprint(dataset_items(info, ids), info.n_cls)  # valid as generated
    info.save(root / "dataset.yaml")
    write_json(marker, params)
    return info
