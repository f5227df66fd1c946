"""The demo's "ImageNet": a synthetic classification set that a small ViT is pretrained on.

The method presumes an ImageNet-pretrained backbone (paper Table IX: 11.4 mIoU from random init, 74.0
from DeiT-S), so the demo's backbone is pretrained on this set first. It is disjoint from the demo: none
of its 28 classes is one of the demo generator's shapes, and the class is carried by shape and
structure only: hue, texture (the demo's eight texture families) and the background (the demo's own
clutter) are drawn independently of the class, so a model can learn nothing here that tells the
demo's classes apart by their colour or texture families. One object per 96 px image, at a random
scale, position, rotation, aspect and mirror image.

With ``objects`` K > 1 (:func:`render_scene`) an image holds 1..K objects of distinct classes,
smaller, side by side with limited overlap, each with its own hue and texture; its label is
multi-hot. This is a generator of its own (:data:`MULTI_GENERATOR`, its own random stream): K = 1
keeps the single-object images above, byte for byte.

Every image has its own RNG seeded by (seed, index, stream): the demo's images use (seed, index), so
the two generators never share a random stream, and the output is identical for any worker count.
"""

from __future__ import annotations

import itertools
import mmap

import numpy as np

from weaktr.cores import cap_workers
from weaktr.data.demo import _background, _colour, _texture
from weaktr.pools import PerItem, fork_pool

CLASSES = (
    "pentagon",
    "ellipse",
    "semicircle",
    "heart",
    "arrow",
    "l_shape",
    "t_shape",
    "h_shape",
    "zigzag",
    "spiral",
    "chevron",
    "hourglass",
    "bars",
    "hash",
    "dice",
    "trapezoid",
    "parallelogram",
    "kite",
    "u_shape",
    "lightning",
    "teardrop",
    "capsule",
    "tripod",
    "wave",
    "comb",
    "ladder",
    "trefoil",
    "dumbbell",
)
GENERATOR = "weaktr.data.pretrain_shapes/1"  # bump the number whenever any image changes
MULTI_GENERATOR = "weaktr.data.pretrain_shapes/multi-1"  # objects > 1: bump whenever such an image changes
_STREAM = 0x5054  # third seed word, "PT": keeps these RNG streams apart from the demo's (seed, index)
_MULTI_STREAM = 0x504D  # "PM": the multi-object images' own streams
_TEXTURES = 8  # the demo's texture families (weaktr.data.demo._texture)
_MULTI_RADIUS = (0.14, 0.26)  # object radius / image size with objects > 1 (one object: 0.2-0.4)
_MULTI_MARGIN = 0.8  # centres at least 0.8 radius inside the frame (one object: 0.75)
_MIN_KEPT = 0.8  # objects overlap by at most 20 % of either one's pixels
_PLACEMENT_TRIES = 12  # positions tried per object; an object that fits nowhere is left out

Grid = np.ndarray


def _box(u: Grid, v: Grid, cu: float, cv: float, hu: float, hv: float) -> Grid:
    return (np.abs(u - cu) <= hu) & (np.abs(v - cv) <= hv)


def _disc(u: Grid, v: Grid, cu: float, cv: float, r: float) -> Grid:
    return (u - cu) ** 2 + (v - cv) ** 2 <= r * r


def _convex(u: Grid, v: Grid, pts: list[tuple[float, float]]) -> Grid:
    """Inside a convex polygon given counter-clockwise or clockwise (the sign is detected)."""
    p = np.asarray(pts, dtype=np.float64)
    q = np.roll(p, -1, axis=0)
    cross = [(b[0] - a[0]) * (v - a[1]) - (b[1] - a[1]) * (u - a[0]) for a, b in zip(p, q, strict=True)]
    c = np.stack(cross)
    return (c >= 0).all(0) | (c <= 0).all(0)


def _segments(u: Grid, v: Grid, pts: list[tuple[float, float]], w: float) -> Grid:
    """A polyline of half-width ``w`` with round joins."""
    out = np.zeros(u.shape, dtype=bool)
    for (au, av), (bu, bv) in itertools.pairwise(pts):
        du, dv = bu - au, bv - av
        t = np.clip(((u - au) * du + (v - av) * dv) / (du * du + dv * dv), 0.0, 1.0)
        out |= (u - au - t * du) ** 2 + (v - av - t * dv) ** 2 <= w * w
    return out


def _regular(u: Grid, v: Grid, n: int, r: float) -> Grid:
    """A regular n-gon of circumradius ``r`` with a vertex at the top."""
    angles = -np.pi / 2 + np.pi / n + 2 * np.pi * np.arange(n) / n  # edge normals
    return np.max([u * np.cos(a) + v * np.sin(a) for a in angles], 0) <= r * np.cos(np.pi / n)


def shape_mask(name: str, u: Grid, v: Grid) -> Grid:
    """Inside test of class ``name`` in the object's unit coordinates (about radius 1, v points down)."""
    if name == "pentagon":
        return _regular(u, v, 5, 1.0)
    if name == "ellipse":
        return u * u + (v / 0.5) ** 2 <= 1.0
    if name == "semicircle":
        return _disc(u, v, 0, 0.42, 1.0) & (v <= 0.42)
    if name == "heart":
        x, y = u * 1.15, -v * 1.15 + 0.15
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    if name == "arrow":
        return _box(u, v, -0.45, 0, 0.55, 0.2) | _convex(u, v, [(1, 0), (0.05, -0.65), (0.05, 0.65)])
    if name == "l_shape":
        return _box(u, v, -0.55, 0, 0.25, 1.0) | _box(u, v, 0.05, 0.75, 0.85, 0.25)
    if name == "t_shape":
        return _box(u, v, 0, -0.75, 1.0, 0.25) | _box(u, v, 0, 0.1, 0.24, 0.9)
    if name == "h_shape":
        return _box(u, v, -0.7, 0, 0.22, 1.0) | _box(u, v, 0.7, 0, 0.22, 1.0) | _box(u, v, 0, 0, 0.7, 0.2)
    if name == "zigzag":
        return _segments(u, v, [(-1, 0.4), (-0.5, -0.4), (0, 0.4), (0.5, -0.4), (1, 0.4)], 0.17)
    if name == "spiral":
        rho, phi = np.hypot(u, v), np.mod(np.arctan2(v, u), 2 * np.pi)
        pitch = 0.42
        d = np.mod(rho - pitch * phi / (2 * np.pi), pitch)
        return (np.abs(d - pitch / 2) <= 0.11) & (rho <= 1.0)
    if name == "chevron":
        return _segments(u, v, [(-0.9, 0.55), (0, -0.5), (0.9, 0.55)], 0.22)
    if name == "hourglass":
        return (np.abs(u) <= 0.1 + 0.75 * np.abs(v)) & (np.abs(v) <= 1.0)
    if name == "bars":
        return np.any([_box(u, v, 0, c, 0.9, 0.17) for c in (-0.68, 0, 0.68)], 0)
    if name == "hash":
        lines = [_box(u, v, c, 0, 0.14, 1.0) for c in (-0.38, 0.38)]
        return np.any(lines + [_box(u, v, 0, c, 1.0, 0.14) for c in (-0.38, 0.38)], 0)
    if name == "dice":
        spots = ((-0.62, -0.62), (0.62, -0.62), (0, 0), (-0.62, 0.62), (0.62, 0.62))
        return np.any([_disc(u, v, a, b, 0.27) for a, b in spots], 0)
    if name == "trapezoid":
        return _convex(u, v, [(-0.4, -0.55), (0.4, -0.55), (1.0, 0.55), (-1.0, 0.55)])
    if name == "parallelogram":
        return (np.abs(v) <= 0.45) & (np.abs(u + 0.9 * v) <= 0.6)
    if name == "kite":
        return _convex(u, v, [(0, -1), (0.62, -0.35), (0, 1), (-0.62, -0.35)])
    if name == "u_shape":
        legs = _box(u, v, -0.65, -0.45, 0.25, 0.55) | _box(u, v, 0.65, -0.45, 0.25, 0.55)
        rho = np.hypot(u, v - 0.1)
        return legs | ((rho >= 0.4) & (rho <= 0.9) & (v >= 0.1))
    if name == "lightning":
        upper = _convex(u, v, [(0.05, -1), (0.7, -1), (0.2, 0.12), (-0.4, 0.12)])
        return upper | _convex(u, v, [(-0.3, -0.12), (0.55, -0.12), (-0.55, 1.0)])
    if name == "teardrop":
        return _disc(u, v, 0, 0.35, 0.62) | _convex(u, v, [(0, -1), (0.55, 0.08), (-0.55, 0.08)])
    if name == "capsule":
        return _segments(u, v, [(-0.8, 0), (0.8, 0)], 0.3)
    if name == "tripod":
        arms = [(0.95 * np.cos(a), 0.95 * np.sin(a)) for a in np.pi / 2 + 2 * np.pi * np.arange(3) / 3]
        return np.any([_segments(u, v, [(0, 0), p], 0.2) for p in arms], 0)
    if name == "wave":
        return (np.abs(v - 0.38 * np.sin(1.5 * np.pi * u)) <= 0.19) & (np.abs(u) <= 1.0)
    if name == "comb":
        teeth = [_box(u, v, c, 0.1, 0.12, 0.85) for c in (-0.82, -0.27, 0.27, 0.82)]
        return np.any([_box(u, v, 0, -0.78, 0.95, 0.17), *teeth], 0)
    if name == "ladder":
        rails = [_box(u, v, c, 0, 0.13, 1.0) for c in (-0.6, 0.6)]
        return np.any(rails + [_box(u, v, 0, c, 0.6, 0.1) for c in (-0.6, 0, 0.6)], 0)
    if name == "trefoil":
        angles = -np.pi / 2 + 2 * np.pi * np.arange(3) / 3
        return np.any([_disc(u, v, 0.46 * np.cos(a), 0.46 * np.sin(a), 0.5) for a in angles], 0)
    if name == "dumbbell":
        return _disc(u, v, -0.62, 0, 0.38) | _disc(u, v, 0.62, 0, 0.38) | _box(u, v, 0, 0, 0.62, 0.13)
    raise ValueError(f"unknown pretraining class {name!r}")


def _place(
    rng: np.random.Generator, size: int, xx: Grid, yy: Grid, radius: tuple[float, float], margin: float
) -> tuple[Grid, Grid]:
    """An object's unit coordinates (u, v) at a random scale, position, rotation, stretch and mirror."""
    r = rng.uniform(*radius) * size
    cx, cy = rng.uniform(margin * r, size - margin * r, 2)
    th = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(th), np.sin(th)
    aspect = np.exp(rng.uniform(-0.2, 0.2))  # a mild stretch: the shape, not its exact proportions
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    u = mirror * ((xx - cx) * c + (yy - cy) * s) / (r * aspect)
    v = (-(xx - cx) * s + (yy - cy) * c) * aspect / r
    return u, v


def _paint(img: np.ndarray, rng: np.random.Generator, m: Grid, u: Grid, v: Grid) -> np.ndarray:
    """``img`` with the object ``m`` drawn in a random colour and texture (independent of its class)."""
    base = _colour(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.45, 1.0))
    dark = base * rng.uniform(0.35, 0.6)
    t = _texture(int(rng.integers(0, _TEXTURES)), u, v, rng)[..., None]
    return np.where(m[..., None], dark + (base - dark) * t, img)


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixel noise, then uint8."""
    img = img + rng.normal(0.0, rng.uniform(0.01, 0.05), img.shape)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def render_image(seed: int, index: int, size: int = 96) -> tuple[np.ndarray, int]:
    """Image ``index`` of the set with ``seed``: (uint8 (size, size, 3) RGB, class index).

    Classes cycle with the index, so every run of ``len(CLASSES)`` images is balanced.
    """
    label = index % len(CLASSES)
    rng = np.random.default_rng([seed, index, _STREAM])
    S = size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64) + 0.5
    img = _background(rng, S, yy, xx)
    u, v = _place(rng, S, xx, yy, (0.2, 0.4), 0.75)
    img = _paint(img, rng, shape_mask(CLASSES[label], u, v), u, v)
    return _finish(img, rng), label


def scene_layout(seed: int, index: int, size: int, objects: int) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Multi-object image ``index``: (uint8 RGB, the classes drawn in drawing order, int64 (size, size)
    owner map: which of them each pixel shows, -1 the background).

    1..``objects`` objects of distinct classes: the first is ``index % len(CLASSES)`` (every class
    leads equally often), the others are drawn from the rest. Each is placed by up to
    :data:`_PLACEMENT_TRIES` tries so that at least :data:`_MIN_KEPT` of its own pixels lie on the
    background and every object drawn before it keeps at least that share of its pixels; an object
    that fits nowhere is left out (and out of the label).
    """
    C = len(CLASSES)
    if not 1 <= objects <= C:
        raise ValueError(f"objects must be 1..{C}, not {objects}")
    rng = np.random.default_rng([seed, index, _MULTI_STREAM])
    S = size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64) + 0.5
    img = _background(rng, S, yy, xx)
    first = index % C
    others = rng.choice(C - 1, int(rng.integers(1, objects + 1)) - 1, replace=False)
    owner = np.full((S, S), -1, dtype=np.int64)
    drawn: list[int] = []
    areas: list[int] = []  # each object's pixels as drawn, before later ones hide part of it
    for k in [first, *(int(o + (o >= first)) for o in others)]:
        j = len(drawn)
        for _ in range(_PLACEMENT_TRIES):
            u, v = _place(rng, S, xx, yy, _MULTI_RADIUS, _MULTI_MARGIN)
            m = shape_mask(CLASSES[k], u, v)
            trial = np.where(m, j, owner)
            kept = np.bincount(trial[trial >= 0], minlength=j + 1)
            free = (m & (owner < 0)).sum() >= _MIN_KEPT * m.sum()  # the new one mostly on background
            if free and all(kept[i] >= _MIN_KEPT * areas[i] for i in range(j)):
                break
        else:
            continue
        img = _paint(img, rng, m, u, v)
        owner = trial
        drawn.append(k)
        areas.append(int(m.sum()))
    return _finish(img, rng), drawn, owner


def render_scene(seed: int, index: int, size: int = 96, objects: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Multi-object image ``index`` (:func:`scene_layout`): (uint8 (size, size, 3) RGB, uint8 (C,)
    multi-hot label)."""
    img, drawn, _ = scene_layout(seed, index, size, objects)
    label = np.zeros(len(CLASSES), dtype=np.uint8)
    label[drawn] = 1
    return img, label


def _render_into(
    images: np.ndarray, labels: np.ndarray | None, seed: int, start: int, size: int, objects: int, rows: range
) -> None:
    for j in rows:
        if labels is None:
            images[j] = render_image(seed, start + j, size)[0]
        else:
            images[j], labels[j] = render_scene(seed, start + j, size, objects)


# the output arrays of the render_set call in progress: forked workers inherit them (shared memory)
_SHARED: tuple[np.ndarray, np.ndarray | None] | None = None

_Job = tuple[int, int, int, int, int, int]  # seed, start, size, objects, first row, end row


def _chunk_item(job: _Job) -> str:
    """What a failed render job names: its range of image indices."""
    _, start, _, _, a, b = job
    return f"synthetic images {start + a}..{start + b - 1}"


def _render_shared(job: _Job) -> None:
    seed, start, size, objects, a, b = job
    assert _SHARED is not None
    _render_into(*_SHARED, seed, start, size, objects, range(a, b))


def _shared_array(shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 array in a MAP_SHARED | MAP_ANONYMOUS mapping: what the forks write, the parent sees."""
    n = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(n, 1)), dtype=np.uint8)[:n].reshape(shape)


def render_set(
    seed: int, start: int, count: int, size: int = 96, workers: int = 1, objects: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start .. start+count-1`` in memory: (uint8 (count, size, size, 3), labels).

    ``objects`` 1: int64 (count,) class indices (:func:`render_image`); ``objects`` K > 1: uint8
    (count, C) multi-hot labels of 1..K objects (:func:`render_scene`).

    Train and validation sets are disjoint index ranges of one seed. ``workers`` > 1 render chunks
    in forked processes straight into one shared anonymous mapping (the images, hundreds of MB, are
    never pickled back); the result does not depend on the worker count.
    """
    global _SHARED
    multi = objects > 1
    workers = cap_workers(workers, "pretrain --workers")
    if workers <= 1 or count < 2 * workers:
        images = np.empty((count, size, size, 3), dtype=np.uint8)
        labels = np.zeros((count, len(CLASSES)), dtype=np.uint8) if multi else None
        _render_into(images, labels, seed, start, size, objects, range(count))
    else:
        images = _shared_array((count, size, size, 3))
        labels = _shared_array((count, len(CLASSES))) if multi else None
        chunks = 8 * workers
        bounds = [count * i // chunks for i in range(chunks + 1)]
        _SHARED = images, labels
        try:
            with fork_pool(workers) as pool:
                jobs = [(seed, start, size, objects, a, b) for a, b in itertools.pairwise(bounds)]
                pool.map(PerItem(_render_shared, _chunk_item), jobs, 1)
        finally:
            _SHARED = None
    if labels is None:
        labels = (np.arange(start, start + count) % len(CLASSES)).astype(np.int64)
    return images, labels
