"""Training curves from the trainers' JSON-lines logs: which logged numbers go in which panel."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from weaktr.report.figures import Panel

STEP_KEYS = ("step", "global_step", "iteration", "iter", "it", "epoch")
MAX_PANELS = 12


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _kind(key: str) -> tuple[str, str, bool]:
    """(panel kind, title, log y axis) of a logged key: losses together, learning rates together."""
    leaf = key.rsplit(".", 1)[-1]
    if "loss" in key or leaf in ("total", "cls", "coarse", "fine"):
        return "loss", "losses", False
    if leaf == "lr" or leaf.startswith("lr_") or leaf.endswith("_lr"):
        return "lr", "learning rate", True
    return key, key, False


def log_panels(records: Sequence[dict[str, Any]]) -> list[Panel]:
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
    panels: dict[str, Panel] = {}
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
            kind, title, log_y = _kind(key)
            if event is not None:
                title += f" · {event}"
            panel = panels.setdefault(f"{kind}/{event}/{xkey}", Panel(title, xkey, log_y=log_y))
            panel.series[key] = (xs, ys)
    rank = {"losses": 0, "learning rate": 1}
    return sorted(panels.values(), key=lambda p: rank.get(p.title.split(" · ")[0], 2))[:MAX_PANELS]
