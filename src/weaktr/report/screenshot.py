"""A run's report in a real browser: headless Chromium opens ``report/index.html`` from disk.

``python -m weaktr.report.screenshot RUN_DIR OUT.png`` takes a full-page screenshot (the README's
picture of the report is made this way from the demo run); the tests use :func:`open_report` to check
that every image loads and the console stays clean. It drives Debian's ``chromium`` through the
``playwright`` package of the ``dev`` extra and never downloads a browser of its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weaktr.errors import InputError
from weaktr.io import atomic_write
from weaktr.runtime.layout import RunLayout

CHROMIUM_ENV = "WEAKTR_CHROMIUM"  # a Chromium other than the one on PATH
# Headless flags that keep a sandboxed, offline machine quiet: no GPU, no QUIC, no first-run UI and
# none of the background fetches (updates, sync) that would log network errors to the console.
FLAGS = (
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1400, "height": 900}
_IMAGES_JS = "els => els.map(e => ({src: e.getAttribute('src'), width: e.naturalWidth}))"
# file:// pages may not read their stylesheets' rules, so the stylesheet shows in a computed style
_HEADER_JS = "() => getComputedStyle(document.querySelector('header')).backgroundColor"


def find_chromium() -> Path | None:
    """$WEAKTR_CHROMIUM, else ``chromium`` (Debian's package) or ``chromium-browser`` on PATH."""
    if os.environ.get(CHROMIUM_ENV):
        return Path(os.environ[CHROMIUM_ENV])
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(found) if found else None


@dataclass
class LoadedReport:
    """The open page and what the browser said while loading it."""

    page: Any  # playwright.sync_api.Page
    images: list[dict[str, Any]]  # {src, width}: naturalWidth 0 means the image did not load
    header_background: str  # the header's computed colour: report.css's when the stylesheet loaded
    console_errors: list[str] = field(default_factory=list)


@contextmanager
def open_report(index: Path, chromium: Path | None = None) -> Iterator[LoadedReport]:
    """Load ``index`` in headless Chromium (a fresh profile) and yield the page with its load record."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise InputError("driving Chromium needs playwright: pip install 'weaktr[dev]'") from exc
    chromium = chromium or find_chromium()
    if chromium is None or not chromium.is_file():
        raise InputError("Chromium not found (Debian: apt-get install chromium)", chromium or "chromium")
    if not index.is_file():
        raise InputError("report not found (build it with 'weaktr report RUN_DIR')", index)
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="weaktr-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(chromium),
            headless=True,
            chromium_sandbox=False,  # --no-sandbox: containers and root shells have no user namespaces
            args=list(FLAGS),
            viewport=VIEWPORT,
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"{r.url}: {r.failure}"))
            page.goto(index.resolve().as_uri(), wait_until="load")
            images = page.eval_on_selector_all("img", _IMAGES_JS)
            yield LoadedReport(page, images, page.evaluate(_HEADER_JS), errors)
        finally:
            context.close()


def screenshot(run_dir: Path, out: Path, chromium: Path | None = None) -> Path:
    """A full-page PNG of ``run_dir``'s report; fails when an image of the page did not load."""
    with open_report(RunLayout(run_dir).report, chromium) as loaded:
        broken = [i["src"] for i in loaded.images if not i["width"]]
        if broken:
            raise InputError(f"the report's images {broken} did not load", RunLayout(run_dir).report)
        png = loaded.page.screenshot(full_page=True)
    with atomic_write(out) as tmp:
        tmp.write_bytes(png)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a run directory with report/index.html"
    )
    parser.add_argument("out", type=Path, metavar="OUT.png", help="where to write the screenshot")
    parser.add_argument(
        "--chromium", type=Path, help=f"the Chromium binary (default: ${CHROMIUM_ENV} or PATH)"
    )
    args = parser.parse_args(argv)
    try:
        print(screenshot(args.run_dir, args.out, args.chromium))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
