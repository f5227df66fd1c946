"""Figures of the visual report, drawn with matplotlib into PNG files.

Each function takes plain arrays (no run-directory knowledge) so the figures can be tested alone
and reused from notebooks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window
import matplotlib.pyplot as plt
import numpy as np

from weaktr.io import atomic_write


def _save(fig: plt.Figure, path: str | Path) -> Path:
    """Save a figure atomically as PNG and close it."""
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def colorize(labels: np.ndarray, palette: Sequence[int]) -> np.ndarray:
    """Label map (H, W) → RGB image through a flat 768-entry palette."""
    pal = np.asarray(list(palette) + [0] * (768 - len(palette)), dtype=np.uint8).reshape(256, 3)
    return pal[labels]


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] heat map (H, W) in the jet colour map over an RGB uint8 image."""
    h = np.clip(np.nan_to_num(heat), 0.0, 1.0)
    rgb = plt.get_cmap("jet")(h)[..., :3]
    return ((1 - alpha) * image / 255.0 + alpha * rgb).clip(0, 1)


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    col_titles: Sequence[str],
    path: str | Path,
    row_titles: Sequence[str] | None = None,
    markers: Sequence[tuple[int, int] | None] | None = None,
    marker_col: int | None = None,
) -> Path:
    """A grid of images (uint8 or float RGB); optional (y, x) markers drawn in column ``marker_col``."""
    n_rows, n_cols = len(rows), len(col_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.0 * n_cols, 2.0 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row) and row[c] is not None:
                ax.imshow(row[c])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=8)
            if c == 0 and row_titles:
                ax.text(
                    -0.05, 0.5, row_titles[r], transform=ax.transAxes, ha="right", va="center", fontsize=7
                )
            if markers and marker_col == c and markers[r] is not None:
                y, x = markers[r]
                ax.plot([x], [y], marker="*", color="white", markersize=10, markeredgecolor="black")
    fig.tight_layout()
    return _save(fig, path)


def aaf_heatmap(weights: np.ndarray, depth: int, heads: int, path: str | Path) -> Path:
    """AAF weights (depth·heads,) in the authors' head-major order (head·depth + layer) as layers × heads."""
    grid = np.asarray(weights, dtype=np.float64).reshape(heads, depth).T
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * heads, 0.8 + 0.35 * depth))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(depth))
    ax.set_yticklabels([str(i + 1) for i in range(depth)])
    ax.set_title("AAF weight per attention map (mean over images)", fontsize=9)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def iou_bars(per_class: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """Grouped bars of per-class IoU, one group per class and one bar per evaluated artefact."""
    names = list(per_class)
    classes = list(dict.fromkeys(c for v in per_class.values() for c in v))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(classes) * max(1, len(names)) / 2), 3.2))
    x = np.arange(len(classes))
    for i, name in enumerate(names):
        vals = [per_class[name].get(c, np.nan) for c in classes]
        ax.bar(x + i * width - 0.4 + width / 2, np.nan_to_num(vals), width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.legend(fontsize=7, ncol=min(len(names), 4))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str,
    log_y: bool = False,
) -> Path:
    """Line plot of named (x, y) series, e.g. losses and learning rate against the step."""
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name, linewidth=1.2)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
