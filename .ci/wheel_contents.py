"""Check a built weaktr wheel against the source tree: every module and packaged data file is in it.

A wheel that lacks a file still installs; the loss shows only when a user's run reaches the code
that reads it (a config, a report template). So the wheel's file list is compared with what the
tree holds: every ``.py`` file under ``src/weaktr`` and every file matching the package-data
patterns of ``pyproject.toml``, plus the licence and the console script in the metadata.

    python .ci/wheel_contents.py dist/weaktr-*.whl [--repo .]

Prints what is missing and exits 1, or prints a one-line count and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pypa/build, which runs this script, brings tomli
    import tomli as tomllib

PACKAGE = "weaktr"


def expected_files(repo: Path) -> set[str]:
    """Wheel paths the tree says must ship: the package's modules and its package-data matches."""
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"][PACKAGE]
    root = repo / "src" / PACKAGE
    found = {p for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    for pattern in patterns:
        found.update(p for p in root.glob(pattern) if p.is_file())
    return {f"{PACKAGE}/{p.relative_to(root).as_posix()}" for p in found}


def problems(wheel: Path, repo: Path) -> list[str]:
    """What is wrong with ``wheel`` for the tree at ``repo``, one line each (empty: nothing)."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = next((n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA")), None)
        if dist_info is None:
            return [f"{wheel.name}: no .dist-info/METADATA"]
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        scripts = f"{dist_info}/entry_points.txt"
        entry_points = zf.read(scripts).decode() if scripts in names else ""
    out = [f"missing {name}" for name in sorted(expected_files(repo) - names)]
    if "License-Expression: MIT" not in metadata.splitlines():
        out.append("METADATA has no 'License-Expression: MIT'")
    if f"{dist_info}/licenses/LICENSE" not in names:
        out.append(f"missing {dist_info}/licenses/LICENSE")
    if "weaktr = weaktr.cli:main" not in entry_points:
        out.append("entry_points.txt has no 'weaktr = weaktr.cli:main' console script")
    strays = sorted(n for n in names if not n.startswith((f"{PACKAGE}/", f"{dist_info}/")))
    out.extend(f"unexpected top-level file {n}" for n in strays)
    return out


def main(argv: list[str] | None = None) -> int:
    """Report the problems of one wheel; exit 1 if there are any, so CI stops."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    found = problems(args.wheel, args.repo)
    for line in found:
        print(f"wheel contents: {line}", file=sys.stderr)
    if not found:
        count = len(expected_files(args.repo))
        print(f"wheel contents: {count} package files present, licence and script ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
