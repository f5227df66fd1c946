"""Figures of the visual report, drawn with matplotlib into PNG files.

Each function takes plain arrays (no run-directory knowledge) so the figures can be tested alone
and reused from notebooks. matplotlib is the optional ``viz`` extra: it is imported when the first
figure is drawn, so that this module (and the pipeline that imports the report) loads without it;
drawing without it raises the one-line :class:`~weaktr.errors.InputError` of :mod:`weaktr.extras`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from weaktr.extras import load
from weaktr.io import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110
NEEDS = "the report"  # what the missing-extra error says needs matplotlib


def _pyplot() -> ModuleType:
    """matplotlib's pyplot, switched to the Agg backend on first use (figures are files; never a window)."""
    if "matplotlib.pyplot" not in sys.modules:
        load("viz", NEEDS, "matplotlib").use("Agg")
    return load("viz", NEEDS, "matplotlib.pyplot")


def _save(fig: Figure, path: str | Path) -> Path:
    """Save a figure atomically as PNG and close it."""
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def colorize(labels: np.ndarray, palette: Sequence[int]) -> np.ndarray:
    """Label map (H, W) → RGB image through a flat 768-entry palette."""
    pal = np.asarray(list(palette) + [0] * (768 - len(palette)), dtype=np.uint8).reshape(256, 3)
    return pal[labels]


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] heat map (H, W) in the jet colour map over an RGB uint8 image."""
    h = np.clip(np.nan_to_num(heat), 0.0, 1.0)
    rgb = _pyplot().get_cmap("jet")(h)[..., :3]
    return ((1 - alpha) * image / 255.0 + alpha * rgb).clip(0, 1)


def image_grid(
    rows: Sequence[Sequence[np.ndarray | None]],
    col_titles: Sequence[str],
    path: str | Path,
    row_titles: Sequence[str] | None = None,
    markers: Sequence[tuple[float, float] | None] | None = None,
    marker_col: int | None = None,
    cell_inches: float = 1.8,
    cell_titles: Sequence[Sequence[str]] | None = None,
) -> Path:
    """A grid of framed images (uint8 or float RGB); ``None`` cells say "not available", short rows end blank.

    ``markers`` hold one (y, x) pixel position per row, drawn as a star in column ``marker_col``;
    ``cell_titles`` (one list per row) replace the column titles above every cell.
    """
    n_rows, n_cols = len(rows), len(col_titles)
    fig, axes = _pyplot().subplots(
        n_rows, n_cols, figsize=(cell_inches * n_cols, cell_inches * n_rows), squeeze=False
    )
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():  # a thin frame keeps black label maps apart
                spine.set_color("0.75")
            cell = row[c] if c < len(row) else None
            if cell is not None:
                ax.imshow(cell)
            elif c < len(row):
                ax.text(0.5, 0.5, "not available", ha="center", va="center", fontsize=7, color="0.5")
            else:
                ax.axis("off")
            if cell_titles is not None and c < len(cell_titles[r]):
                ax.set_title(cell_titles[r][c], fontsize=7)
            elif r == 0 and cell_titles is None:
                ax.set_title(col_titles[c], fontsize=8)
            if c == 0 and row_titles:
                ax.text(
                    -0.06, 0.5, row_titles[r], transform=ax.transAxes, ha="right", va="center", fontsize=7
                )
            if markers and marker_col == c and markers[r] is not None and cell is not None:
                y, x = markers[r]
                ax.plot([x], [y], marker="*", color="white", markersize=11, markeredgecolor="black")
    fig.tight_layout(pad=0.3, w_pad=0.5, h_pad=0.5)
    return _save(fig, path)


def aaf_heatmap(weights: np.ndarray, depth: int, heads: int, path: str | Path) -> Path:
    """AAF weights (depth·heads,) in the authors' head-major order (head·depth + layer) as layers × heads."""
    grid = np.asarray(weights, dtype=np.float64).reshape(heads, depth).T
    fig, ax = _pyplot().subplots(figsize=(1.6 + 0.5 * heads, 1.0 + 0.4 * depth))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_xticklabels([str(i + 1) for i in range(heads)])
    ax.set_yticks(range(depth))
    ax.set_yticklabels([str(i + 1) for i in range(depth)])
    ax.set_title("AAF weight per attention map (mean over images)", fontsize=9)
    if depth * heads <= 48:  # small grids (the demo's 2 × 4) read better with the numbers written in
        lo, hi = float(grid.min()), float(grid.max())
        for (i, j), v in np.ndenumerate(grid):
            light = hi > lo and (v - lo) / (hi - lo) < 0.5
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, color="white" if light else "k")
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def iou_bars(per_class: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """Grouped bars of per-class IoU, one group per class and one bar per evaluated artefact."""
    names = list(per_class)
    classes = list(dict.fromkeys(c for v in per_class.values() for c in v))
    width = 0.8 / max(len(names), 1)
    fig_w = float(np.clip(1.5 + 0.22 * len(classes) * max(1, len(names)) ** 0.5, 6.0, 22.0))
    fig, ax = _pyplot().subplots(figsize=(fig_w, 3.4))
    x = np.arange(len(classes))
    for i, name in enumerate(names):
        vals = [per_class[name].get(c, np.nan) for c in classes]
        ax.bar(x + i * width - 0.4 + width / 2, np.nan_to_num(vals), width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


@dataclass
class Panel:
    """One subplot of :func:`curve_panels`: named (x, y) series sharing an x axis."""

    title: str
    xlabel: str
    series: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    log_y: bool = False


def curve_panels(panels: Sequence[Panel], path: str | Path, title: str, columns: int = 3) -> Path:
    """Training curves as a grid of line plots (losses, learning rate, other logged numbers)."""
    if not panels:
        raise ValueError("no panels to draw")
    cols = min(columns, len(panels))
    rows = -(-len(panels) // cols)
    ticker = load("viz", NEEDS, "matplotlib.ticker")
    fig, axes = _pyplot().subplots(rows, cols, figsize=(4.2 * cols, 2.7 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.axis("off")
            continue
        panel = panels[k]
        for name, (xs, ys) in panel.series.items():
            style = {"marker": "o", "markersize": 3} if len(xs) < 30 else {}
            ax.plot(xs, ys, label=name, linewidth=1.2, **style)
        values = [v for _, ys in panel.series.values() for v in ys]
        if panel.log_y and min(values) > 0 and max(values) > 20 * min(values):  # log only across decades
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())  # no '6×10⁻³' labels on every minor tick
        if panel.xlabel == "epoch":
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_xlabel(panel.xlabel, fontsize=8)
        ax.set_title(panel.title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(panel.series) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
