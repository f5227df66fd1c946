"""``weaktr export-model RUN_DIR [--format onnx] [--out FILE]``: the trained segmenter as an ONNX file.

The export takes any batch, height and width and has both decoder outputs (the two-layer ensemble
uses both). ``weaktr predict --backend onnxruntime`` and ``WeakTr.from_run(RUN_DIR,
backend="onnxruntime")`` run it with the same sliding-window code as PyTorch. Needs the ``onnx``
extra (``pip install 'weaktr[onnx]'``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from weaktr.errors import InputError
from weaktr.extras import require


def execute(args: argparse.Namespace) -> int:
    """Export the run's segmenter (or ``--checkpoint``); print the file written."""
    require("onnx", "ONNX export")  # before anything is loaded
    from weaktr.evaluation.onnx_backend import export_segmenter
    from weaktr.runtime.layout import RunLayout

    layout = RunLayout(Path(args.run_dir))
    checkpoint = Path(args.checkpoint) if args.checkpoint else layout.seg_model
    if not checkpoint.is_file():
        raise InputError("segmenter checkpoint not found (train it with 'weaktr train-seg')", checkpoint)
    out = export_segmenter(checkpoint, Path(args.out) if args.out else layout.seg_onnx)
    print(f"{out.resolve()}: ONNX segmenter (dynamic batch, height, width; masks, masks_layer1)")
    print(f"  from {checkpoint.resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-model", help="export the trained segmenter for onnxruntime", description=__doc__
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by 'weaktr run'")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="file format (onnx)")
    p.add_argument("--out", metavar="FILE", help="where to write it (default: RUN_DIR/seg/model.onnx)")
    p.add_argument(
        "--checkpoint", metavar="PATH", help="segmenter to export (default: RUN_DIR/seg/model.safetensors)"
    )
    p.set_defaults(func=execute)
