"""The visual report of a run directory: one self-contained ``report/`` folder (index.html, report.css, PNGs).

It reads whatever the run has produced so far — a report of a half-finished or partly deleted run
shows what is there and names what is absent — and never trains, never builds a model and never
writes outside ``report/``. The CAM and attention maps of the sample images come from the views
stage (``views/``); the page itself is rendered from the Jinja2 templates beside this module.
"""

from __future__ import annotations

import datetime as dt
import math
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2

from weaktr.data.palette import voc_palette
from weaktr.errors import InputError
from weaktr.extras import require
from weaktr.io import atomic_write
from weaktr.report import sections
from weaktr.report.artefacts import read_config, read_dataset, read_metrics, read_scores
from weaktr.report.figures import NEEDS as REPORT_NEEDS
from weaktr.runtime.layout import RunLayout
from weaktr.runtime.logging import format_seconds

DEFAULT_EXAMPLES = 8  # sample images per figure when the run has no readable config


def _number(value: Any) -> str:
    """A score as the tables show it: three decimals, '–' for NaN; anything else as text."""
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def environment() -> jinja2.Environment:
    """The templates of the package, HTML-escaped, failing on a misspelt name rather than printing ''."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("weaktr.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["number"] = _number
    env.filters["duration"] = format_seconds
    return env


def build_report(run_dir: str | Path, n_examples: int | None = None) -> Path:
    """Write ``run_dir/report/index.html``, its stylesheet and figures from what the run directory holds.

    ``n_examples`` (default: the config's ``report.n_examples``) is the number of sample images per
    figure (the CAM figure shows at most the images the views stage wrote). Returns index.html's path.
    """
    require("viz", REPORT_NEEDS)  # before report/ is made
    lay = RunLayout(Path(run_dir))
    if not lay.root.is_dir():
        raise InputError("run directory not found", lay.root)
    lay.report_dir.mkdir(parents=True, exist_ok=True)
    absent: list[str] = []
    cfg, config_text = read_config(lay, absent)
    dataset = read_dataset(cfg, lay, absent) if cfg else None
    n = n_examples if n_examples is not None else (cfg.report.n_examples if cfg else DEFAULT_EXAMPLES)
    page = sections.Page(lay, cfg, dataset, n, voc_palette(), absent)

    metrics = read_metrics(lay, page.absent)
    found = [sections.summary(page, *read_scores(lay, page.absent), metrics), sections.iou(page, metrics)]
    if cfg is not None and dataset is not None:
        found += [sections.legend(page, dataset), *sections.cams(page, dataset)]
        found += [sections.examples(page, cfg, dataset), sections.data(page, cfg, dataset)]
    found.append(sections.curves(page))
    if config_text is not None:
        found.append(
            sections.Section("config", "Config (config.yaml)", "config.html.j2", {"text": config_text})
        )
    shown = [s for s in found if s is not None]
    if page.absent:
        shown.append(
            sections.Section(
                "absent", "Not in this run directory", "absent.html.j2", {"entries": page.absent}
            )
        )

    html = (
        environment()
        .get_template("index.html.j2")
        .render(
            name=cfg.name if cfg else lay.root.name,
            run_dir=str(lay.root.resolve()),
            built=dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            css=lay.report_css.name,
            sections=shown,
        )
    )
    with atomic_write(lay.report_css) as tmp:
        tmp.write_bytes((files("weaktr.report") / "static" / "report.css").read_bytes())
    with atomic_write(lay.report) as tmp:
        tmp.write_text(html, encoding="utf-8")
    for stale in lay.report_dir.glob("*.png"):  # figures of sections that this build could not draw
        if stale.name not in page.written:
            stale.unlink()
    return lay.report
