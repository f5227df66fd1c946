"""Every speed ratio against the authors in one markdown table, from bench_cam's and bench_seg's JSON.

The two benchmark scripts print separate tables with different columns, from runs that may come from
different machines; this puts each ratio in one row beside the machine and load it was measured
under. It reads JSON only (no torch), so it runs in a fraction of a second. A file whose run skipped
bf16 (top-level ``"bf16_skipped"``: a CPU without native bf16) gets bf16 rows saying so, their
targets "not measured"; files with bf16 entries read as before.

The authors' figures (built in: ``targets.AUTHORS``; or ``--authors FILE``, their own results file
such as ``shared/bench/authors-xeon-2026-12-07.json``) are divided into a file's figures only when
that file's ``machine`` is the kind of CPU theirs were recorded on (model name and SIMD flags);
otherwise the authors' column says "none for this CPU" and the header says why. The same-machine
baselines (the authors' CAM loop re-enacted on our model; our segmenter with their unfused attention)
come from the same run as the figure they divide.

    python benchmarks/summary.py [--cam FILE] [--seg FILE] [--authors FILE] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from targets import (
    AGREEMENT_MIN,
    AUTHORS,
    BF16_SKIPPED_CELL,
    CAM_TARGETS,
    NO_AUTHORS_CELL,
    AuthorsFigures,
    authors_from_json,
    cpu_label,
)

RESULTS = Path(__file__).resolve().parent / "results"
PRECISIONS = (("fp32", "float32", ""), ("bf16", "bf16", "_bf16"))  # label, bench_cam key, bench_seg suffix
HEADER = (
    "| measure | precision | weaktr wall s (CPU s) | authors s | authors / weaktr "
    "| same-machine baseline / weaktr | target and verdict |\n|---|---|---|---|---|---|---|"
)
SUMMARY_KEYS = ("cam_train_step", "cam_gen", "seg_train_step", "infer_1scale", "infer_6scale_flip_ens")
# a figure of theirs to divide by (None: none), and what the authors' column shows
Theirs = tuple[float | None, str]


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


def load_authors(path: Path | None) -> AuthorsFigures:
    """The built-in authors' figures, or those of ``path`` instead (one run of their code, one CPU)."""
    if path is None:
        return AuthorsFigures(
            {k: AUTHORS.seconds.get(k) for k in SUMMARY_KEYS}, AUTHORS.cpu, AUTHORS.simd, AUTHORS.source
        )
    try:
        return authors_from_json(read_json(path), SUMMARY_KEYS, "for_summary", f"`{path}`")
    except ValueError as e:
        fail(f"{path}: {e}")


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
    measure: str, prec: str, ours: dict[str, Any], theirs: Theirs, same: str = "", verdict: str = ""
) -> list[str]:
    wall, (base, cell) = ours["wall_s"], theirs
    cells = [measure, prec, f"{wall:.2f} ({ours['cpu_s']:.2f})", cell, ratio(base and base / wall)]
    return [*cells, same, verdict]


def theirs_for(
    authors: AuthorsFigures, res: dict[str, Any], cell: str = NO_AUTHORS_CELL
) -> Callable[[str], Theirs]:
    """A file's view of the authors' figures: a figure only where its CPU is of their kind (else ``cell``)."""
    other = authors.other_cpu(res.get("machine"))

    def get(key: str) -> Theirs:
        base = authors.seconds.get(key)
        if base is None:
            return None, ""
        return (None, cell) if other or cell != NO_AUTHORS_CELL else (base, f"{base:.2f}")

    return get


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


def cam_rows(res: dict[str, Any], authors: AuthorsFigures) -> list[list[str]]:
    """Training step and CAM generation; the generation ratios as bench_cam.py's verdict computes them."""
    skipped = bool(res.get("bf16_skipped"))
    # bench_cam times on CUDA where there is a GPU: no CPU figure of theirs to divide by
    theirs = theirs_for(
        authors, res, "none for CUDA" if res.get("machine", {}).get("cuda") else NO_AUTHORS_CELL
    )
    rows, step = [], "CAM training step, b8 224²"
    for prec, key, _ in PRECISIONS:
        if key in res.get("train_step", {}):
            rows.append(row(step, prec, res["train_step"][key], theirs("cam_train_step")))
        elif prec == "bf16" and skipped:
            rows.append(skipped_row(step))
    cam = res.get("cam_gen", {})
    label = "multi-scale CAM generation 1.0/1.2 + flips"
    reenacted = cam.get("theirs_float32")  # the re-enactment (files from before 2026-12-04 have none)
    for prec, key, _ in PRECISIONS:
        ours = cam.get(f"ours_{key}") or cam.get(key)
        if ours is None:
            if prec == "bf16" and skipped and cam:
                target = CAM_TARGETS[key]
                rows.append(skipped_row(label, f"≥ {target:g}× against the re-enactment: not measured"))
            continue
        same = pairs = None
        if reenacted:  # ratio of the medians, as bench_cam's verdict; its rounds give the range
            same = reenacted["wall_s"] / ours["wall_s"]
            if len(reenacted.get("walls", [])) == len(ours.get("walls", [])):
                pairs = [t / o for t, o in zip(reenacted["walls"], ours["walls"], strict=True)]
        target = CAM_TARGETS[key]
        counts, note = agreement(res.get("bf16_seed_agreement"), "seeds") if prec == "bf16" else (True, "")
        if not counts:
            verdict = note
        elif same is None:
            verdict = f"≥ {target:g}× against the re-enactment: no re-enactment in these results"
        else:
            verdict = f"≥ {target:g}× against the re-enactment: {'met' if same >= target else 'missed'}"
            verdict += f"; {note}" if note else ""
        rows.append(row(label, prec, ours, theirs("cam_gen"), ratio(same, pairs), verdict))
    return rows


def seg_rows(res: dict[str, Any], authors: AuthorsFigures) -> list[list[str]]:
    """Training step (against our model with the authors' attention too), 1-scale and 6-scale inference."""
    t = res.get("timings", {})
    s = res.get("settings", {})
    theirs = theirs_for(authors, res)
    where, why = "", NO_AUTHORS_CELL  # a dry run's model, or a GPU: no figure of theirs to divide by
    if s.get("train_tiny"):
        where, why = " (tiny dry run)", "none for the tiny model"
    elif s.get("train_device") == "cuda":
        where, why = " (CUDA)", "none for CUDA"
    step_theirs = theirs_for(authors, res, why)("seg_train_step")
    skipped = bool(res.get("bf16_skipped"))
    rows = []
    way = t.get("train_step_authors_way")  # our model with the authors' unfused attention
    label = f"segmenter training step, b4 480² + GC loss{where}"
    for prec, _, suffix in PRECISIONS:
        if r := t.get(f"train_step{suffix}"):
            same = ratio(way["wall_s"] / r["wall_s"]) if way else ""
            rows.append(row(label, prec, r, step_theirs, same))
        elif prec == "bf16" and skipped and s.get("train_bf16") and "train_step" in t:
            rows.append(skipped_row(label))
    if s.get("infer_tiny"):
        theirs = theirs_for(authors, res, "none for the tiny model")
    tiny = " (tiny dry run)" if s.get("infer_tiny") else ""
    for key, label in (
        ("infer_1scale", f"1-scale inference, 500×375{tiny}"),
        ("infer_6scale_flip_ens", f"6 scales × flip + ensemble{tiny}"),
    ):
        for prec, _, suffix in PRECISIONS:
            if not (r := t.get(key + suffix)):
                if prec == "bf16" and skipped and key in t:
                    rows.append(skipped_row(label))
                continue
            verdict = agreement(r.get("agreement"), "pixels")[1] if prec == "bf16" else ""
            rows.append(row(label, prec, r, theirs(key), "", verdict))
    return rows


def source(label: str, path: Path, res: dict[str, Any]) -> str:
    """Where a file's figures came from: its CPU, torch threads and the load before and after."""
    m = res.get("machine", {})

    def loads(key: str) -> str:
        value = res.get(key, res.get(key.replace("load_", "load_average_")))
        return "/".join(f"{v:.2f}" for v in value) if value else "?"

    return (
        f"- {label}: `{path.name}`, {cpu_label(m.get('cpu'), m.get('cpu_simd_flags'))} "
        f"({m.get('cpu_capability') or '?'}), {m.get('torch_threads', '?')} torch threads, "
        f"load {loads('load_before')} → {loads('load_after')}"
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
    figures = ", ".join(f"{k} {v:.2f}" for k, v in authors.seconds.items() if v)
    lines = [
        source("phase 1 (bench_cam)", cam, results[cam]),
        source("phase 2 (bench_seg)", seg, results[seg]),
        f"- authors' figures (their code, float32, s; {authors.source or 'source not named'}): "
        f"{authors.label}: {figures}",
    ]
    for label, path in (("phase 1", cam), ("phase 2", seg)):
        if reason := authors.other_cpu(results[path].get("machine")):
            lines.append(f"- {label}: no ratio against the authors: {reason}")
        if reason := results[path].get("bf16_skipped"):
            lines.append(f"- {label}: bf16 not timed, {reason}")
    cpus = [r.get("machine", {}) for r in results.values()]
    if len({(m.get("cpu"), m.get("cpu_capability"), str(m.get("cpu_simd_flags"))) for m in cpus}) > 1:
        labels = [cpu_label(m.get("cpu"), m.get("cpu_simd_flags")) for m in cpus]
        lines.append(f"- the two files come from different CPUs ({labels[0]} / {labels[1]})")
    lines += ["", HEADER, *("| " + " | ".join(r) + " |" for r in rows), ""]
    lines.append(
        "bf16 rows use the authors' float32 figure; same-machine baselines: CAM generation against the "
        "authors' loop re-enacted on our model (brackets: the range of the same-round ratios), the "
        "segmenter step against our model with the authors' unfused attention (not their code)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cam", type=Path, help="bench_cam results (default: the newest in results/)")
    parser.add_argument("--seg", type=Path, default=RESULTS / "bench_seg.json", help="bench_seg results")
    parser.add_argument(
        "--authors",
        type=Path,
        help="the authors' figures instead of the built-in ones: their results file (meta.cpu_model, "
        f"meta.cpu_simd_flags, for_summary) or a flat JSON object of s ({', '.join(SUMMARY_KEYS)}; "
        "cpu_model and cpu_simd_flags name its CPU)",
    )
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    text = summary(args.cam or newest_cam(RESULTS), args.seg, args.authors)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
