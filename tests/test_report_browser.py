"""The report in a real browser: headless Chromium loads every figure and the stylesheet, console clean.

Needs Debian's ``chromium`` and the ``playwright`` package (the ``dev`` extra); skips without them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")

from test_report import make_tiny_run

from weaktr.report.render import build_report
from weaktr.report.screenshot import find_chromium, main, open_report

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not CHROMIUM.is_file(),
    reason="no Chromium on PATH (Debian: apt-get install chromium; or set WEAKTR_CHROMIUM)",
)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_tiny_run(tmp_path_factory.mktemp("browser") / "run")
    build_report(run)
    return run


def test_every_image_loads_and_the_console_is_clean(tiny_report: Path) -> None:
    with open_report(tiny_report / "report" / "index.html") as loaded:
        srcs = [i["src"] for i in loaded.images]
        assert len(srcs) == 7 and {"cams.png", "aaf.png", "iou.png"} <= set(srcs)
        assert [i["src"] for i in loaded.images if i["width"] == 0] == []
        assert loaded.header_background == "rgb(37, 48, 65)"  # report.css beside index.html applied
        assert loaded.console_errors == []
        assert loaded.page.title() == "WeakTr report: demo"


def test_a_missing_figure_shows_in_the_browser(tiny_report: Path, tmp_path: Path) -> None:
    """The check above can fail: a figure deleted after the build is a broken image and a console error."""
    broken = tmp_path / "report"
    broken.mkdir()
    for f in (tiny_report / "report").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "aaf.png").unlink()
    with open_report(broken / "index.html") as loaded:
        assert [i["src"] for i in loaded.images if i["width"] == 0] == ["aaf.png"]
        assert any("aaf.png" in e for e in loaded.console_errors)


def test_screenshot_command_writes_a_full_page_png(tiny_report: Path, tmp_path: Path) -> None:
    out = tmp_path / "shot.png"
    assert main([str(tiny_report), str(out)]) == 0
    with Image.open(out) as img:
        assert (
            img.format == "PNG" and img.width >= 1400 and img.height > 2000
        )  # the whole page, not a viewport
    assert main([str(tmp_path / "nope"), str(out)]) == 2
