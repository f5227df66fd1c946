"""``weaktr predict``: multi-scale + flip predictions (ensemble, softmax CRF) of a split, as PNGs.

Run it on the val split for predictions and on the train split for pseudo masks; score the
outputs with ``weaktr evaluate``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from weaktr.choices import BACKENDS
from weaktr.commands.common import add_config_args, load_run_config
from weaktr.errors import InputError
from weaktr.extras import require


def execute(args: argparse.Namespace) -> int:
    """Predict every requested split; print the output folders."""
    cfg = load_run_config(args)
    splits = args.split or list(cfg.predict.splits)
    if args.out and len(splits) != 1:
        raise InputError(f"--out names one folder but {len(splits)} splits are to be predicted: {splits}")
    crf = cfg.predict.crf and not args.no_crf
    if crf:
        require("crf", "the prediction CRF (predict.crf; --no-crf skips it)")
    if args.backend == "onnxruntime":
        require("onnx", "--backend onnxruntime", "onnxruntime")
    from weaktr.runtime.context import open_run
    from weaktr.runtime.layout import nocrf_dir, probs_dir
    from weaktr.stages.predict import predict_split

    ctx = open_run(cfg)
    default = ctx.layout.seg_onnx if args.backend == "onnxruntime" else ctx.layout.seg_model
    checkpoint = Path(args.checkpoint) if args.checkpoint else default
    for split in splits:
        out = Path(args.out) if args.out else ctx.layout.pred(split)
        out = predict_split(ctx, checkpoint, split, out, crf, args.save_probs, args.backend)
        if ctx.dist.is_main:
            print(f"{split}: {out.resolve()}" + ("  (after CRF)" if crf else ""))
            if crf:
                print(f"  before CRF:    {nocrf_dir(out).resolve()}")
            if args.save_probs:
                print(f"  probabilities: {probs_dir(out).resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="predict label maps of a split with the trained segmenter", description=__doc__
    )
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="segmenter (default: RUN_DIR/seg/model.safetensors, or its model.onnx with onnxruntime)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="run the segmenter in PyTorch or, exported by 'weaktr export-model', in onnxruntime (CPU)",
    )
    p.add_argument(
        "--split",
        action="append",
        metavar="S",
        help="split to predict (repeatable; default: the config's predict.splits)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder for a single split (default: RUN_DIR/pred/S)")
    p.add_argument("--no-crf", action="store_true", help="skip the softmax CRF")
    p.add_argument(
        "--save-probs", action="store_true", help="also write float16 probabilities of the present classes"
    )
    add_config_args(p)
    p.set_defaults(func=execute)
