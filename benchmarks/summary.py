"""Every speed ratio against the authors in one markdown table, from bench_cam's and bench_seg's JSON.

The two benchmark scripts print separate tables with different columns, from runs that may come from
different machines; this puts each ratio in one row beside the machine and load it was measured
under. It reads JSON only (no torch), so it runs in a fraction of a second. A file whose run skipped
bf16 (top-level ``"bf16_skipped"``: a CPU without native bf16) gets bf16 rows saying so, their
targets "not measured"; files with bf16 entries read as before.

    python benchmarks/summary.py [--cam FILE] [--seg FILE] [--authors FILE] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, NoReturn

from targets import AGREEMENT_MIN, AUTHORS, BF16_SKIPPED_CELL, CAM_TARGETS

RESULTS = Path(__file__).resolve().parent / "results"
PRECISIONS = (("fp32", "float32", ""), ("bf16", "bf16", "_bf16"))  # label, bench_cam key, bench_seg suffix
HEADER = (
    "| measure | precision | weaktr wall s (CPU s) | authors s | authors / weaktr "
    "| their loop re-enacted here / weaktr | target and verdict |\n|---|---|---|---|---|---|---|"
)


def fail(message: str) -> NoReturn:
    """One line on stderr and exit 2 (a usage error, as argparse's), so a script can tell it apart."""
    print(f"summary.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or exit 2 naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})")
    if not isinstance(data, dict):
        fail(f"{path}: not a JSON object")
    return data


def load_authors(path: Path | None) -> dict[str, float | None]:
    """The built-in authors' figures, overridden / extended by the JSON object in ``path``."""
    figures = dict(AUTHORS)
    if path is None:
        return figures
    given = read_json(path)
    unknown = sorted(set(given) - set(AUTHORS))
    if unknown:
        fail(f"{path}: unknown key(s) {unknown}; known: {sorted(AUTHORS)}")
    for key, value in given.items():
        if value is not None and (type(value) not in (int, float) or value <= 0):
            fail(f"{path}: {key} must be seconds (a positive number) or null, not {value!r}")
    figures.update(given)
    return figures


def newest_cam(directory: Path) -> Path:
    """The newest ``bench_cam_<YYYYmmdd-HHMMSS>.json``: the stamp sorts as text."""
    found = sorted(directory.glob("bench_cam_*.json"))
    if not found:
        fail(f"{directory}: no bench_cam_*.json in it")
    return found[-1]


def ratio(value: float | None, pairs: list[float] | None = None) -> str:
    """``1.81×``, with the range of the per-round ratios when there are several."""
    if value is None:
        return ""
    return f"{value:.2f}×" + (f" ({min(pairs):.2f}–{max(pairs):.2f})" if pairs and len(pairs) > 1 else "")


def row(
    measure: str, prec: str, ours: dict[str, Any], authors: float | None, same: str = "", verdict: str = ""
) -> list[str]:
    wall, theirs = ours["wall_s"], f"{authors:.2f}" if authors else ""
    cells = [measure, prec, f"{wall:.2f} ({ours['cpu_s']:.2f})", theirs, ratio(authors and authors / wall)]
    return [*cells, same, verdict]


def skipped_row(measure: str, verdict: str = "not measured") -> list[str]:
    """A bf16 row the run skipped for want of native bf16: no figure, so no ratio and no verdict met."""
    return [measure, "bf16", BF16_SKIPPED_CELL, "", "", "", verdict]


def agreement(value: float | None, what: str) -> tuple[bool, str]:
    """Whether a bf16 result counts, and what to say about its agreement with float32."""
    if value is None:
        return False, f"does not count: no {what} agreement with fp32 in the results"
    if value < AGREEMENT_MIN:
        return False, f"does not count: {what} agree {100 * value:.2f} % with fp32 (< 99.5 %)"
    return True, f"{what} agree {100 * value:.2f} % with fp32"


def cam_rows(res: dict[str, Any], authors: dict[str, float | None]) -> list[list[str]]:
    """Training step and CAM generation; the generation ratios as bench_cam.py's verdict computes them."""
    skipped = bool(res.get("bf16_skipped"))
    rows, step = [], "CAM training step, b8 224²"
    for prec, key, _ in PRECISIONS:
        if key in res.get("train_step", {}):
            rows.append(row(step, prec, res["train_step"][key], authors["cam_train_step"]))
        elif prec == "bf16" and skipped:
            rows.append(skipped_row(step))
    cam = res.get("cam_gen", {})
    label = "multi-scale CAM generation 1.0/1.2 + flips"
    theirs = cam.get("theirs_float32")  # the re-enactment (files from before 2026-12-04 have none)
    for prec, key, _ in PRECISIONS:
        ours = cam.get(f"ours_{key}") or cam.get(key)
        if ours is None:
            if prec == "bf16" and skipped and cam:
                target = CAM_TARGETS[key]
                rows.append(skipped_row(label, f"≥ {target:g}× against the re-enactment: not measured"))
            continue
        same = pairs = None
        if theirs:  # ratio of the medians, as bench_cam's verdict; its rounds give the range
            same = theirs["wall_s"] / ours["wall_s"]
            if len(theirs.get("walls", [])) == len(ours.get("walls", [])):
                pairs = [t / o for t, o in zip(theirs["walls"], ours["walls"], strict=True)]
        target = CAM_TARGETS[key]
        counts, note = agreement(res.get("bf16_seed_agreement"), "seeds") if prec == "bf16" else (True, "")
        if not counts:
            verdict = note
        elif same is None:
            verdict = f"≥ {target:g}× against the re-enactment: no re-enactment in these results"
        else:
            verdict = f"≥ {target:g}× against the re-enactment: {'met' if same >= target else 'missed'}"
            verdict += f"; {note}" if note else ""
        rows.append(row(label, prec, ours, authors["cam_gen"], ratio(same, pairs), verdict))
    return rows


def seg_rows(res: dict[str, Any], authors: dict[str, float | None]) -> list[list[str]]:
    """Training step, 1-scale and 6-scale inference; the 6-scale ratio is the median of same-round ones."""
    t = res.get("timings", {})
    s = res.get("settings", {})
    where = " (tiny dry run)" if s.get("train_tiny") else " (CUDA)" if s.get("train_device") == "cuda" else ""
    skipped = bool(res.get("bf16_skipped"))
    rows = []
    way = t.get("train_step_authors_way")
    label = f"segmenter training step, b4 480² + GC loss{where}"
    for prec, _, suffix in PRECISIONS:
        if r := t.get(f"train_step{suffix}"):
            same = ratio(way["wall_s"] / r["wall_s"]) if way else ""
            rows.append(row(label, prec, r, authors["seg_train_step"], same))
        elif prec == "bf16" and skipped and s.get("train_bf16") and "train_step" in t:
            rows.append(skipped_row(label))
    way = t.get("infer_6scale_flip_ens_authors_way")
    for key, label, authors_s in (
        ("infer_1scale", "1-scale inference, 500×375", authors["infer_1scale"]),
        ("infer_6scale_flip_ens", "6 scales × flip + ensemble", authors["infer_6scale_flip_ens"]),
    ):
        for prec, _, suffix in PRECISIONS:
            if not (r := t.get(key + suffix)):
                if prec == "bf16" and skipped and key in t:
                    rows.append(skipped_row(label))
                continue
            pairs = r.get("authors_way_ratios")
            same = statistics.median(pairs) if pairs else None
            if same is None and way and key != "infer_1scale":
                same = way["wall_s"] / r["wall_s"]
            verdict = agreement(r.get("agreement"), "pixels")[1] if prec == "bf16" else ""
            rows.append(row(label, prec, r, authors_s, ratio(same, pairs), verdict))
    return rows


def source(label: str, path: Path, res: dict[str, Any]) -> str:
    """Where a file's figures came from: its CPU, torch threads and the load before and after."""
    m = res.get("machine", {})

    def loads(key: str) -> str:
        value = res.get(key, res.get(key.replace("load_", "load_average_")))
        return "/".join(f"{v:.2f}" for v in value) if value else "?"

    return (
        f"- {label}: `{path.name}`, {m.get('cpu', '?')} ({m.get('cpu_capability') or '?'}), "
        f"{m.get('torch_threads', '?')} torch threads, load {loads('load_before')} → {loads('load_after')}"
    )


def summary(cam: Path, seg: Path, authors_file: Path | None = None) -> str:
    """The header lines and the table for two results files (exit 2 when one cannot be read)."""
    authors = load_authors(authors_file)
    results = {path: read_json(path) for path in (cam, seg)}
    rows = []
    for path, build in ((cam, cam_rows), (seg, seg_rows)):
        try:
            rows += build(results[path], authors)
        except (KeyError, TypeError, ZeroDivisionError) as e:
            fail(f"{path}: not the results this expects ({e!r})")
    where = f"the defaults, overridden by `{authors_file}`" if authors_file else "their own code, 2026-12-03"
    figures = ", ".join(f"{k} {v:.2f}" for k, v in authors.items() if v)
    lines = [
        source("phase 1 (bench_cam)", cam, results[cam]),
        source("phase 2 (bench_seg)", seg, results[seg]),
        f"- authors' figures (float32, s; {where}): {figures}",
    ]
    for label, path in (("phase 1", cam), ("phase 2", seg)):
        if reason := results[path].get("bf16_skipped"):
            lines.append(f"- {label}: bf16 not timed, {reason}")
    cpus = [r.get("machine", {}) for r in results.values()]
    if len({(m.get("cpu"), m.get("cpu_capability")) for m in cpus}) > 1:
        lines.append(
            f"- the two files come from different CPUs ({cpus[0].get('cpu')} / {cpus[1].get('cpu')})"
        )
    lines += ["", HEADER, *("| " + " | ".join(r) + " |" for r in rows), ""]
    lines.append("bf16 rows use the authors' float32 figure; brackets: the range of the same-round ratios.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cam", type=Path, help="bench_cam results (default: the newest in results/)")
    parser.add_argument("--seg", type=Path, default=RESULTS / "bench_seg.json", help="bench_seg results")
    parser.add_argument("--authors", type=Path, help=f"JSON overriding the authors' s: {', '.join(AUTHORS)}")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    text = summary(args.cam or newest_cam(RESULTS), args.seg, args.authors)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
