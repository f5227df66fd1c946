"""``weaktr convert cam|segmenter --official PATH --out PATH``: the authors' checkpoints in our format.

The architecture is read from the tensor shapes. What the weights cannot tell — the timm backbone
name (normalisation, block type) and the AAF pooling of a CAM model — comes from ``--backbone`` /
``--pool``, else from the config (``cam_model`` / ``seg_model``), so ``--config voc_vit_small``
converts the authors' ViT-S segmenter. Their AAF_RandWeight CAM model keeps its fixed fusion vector
in ``query.npy`` beside the checkpoint: pass it with ``--query``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from weaktr.commands.common import add_config_args, load_run_config
from weaktr.errors import InputError


def convert_cam(official: Path, out: Path, backbone: str, pool: str, query: Path | None = None) -> None:
    """The authors' WeakTr (phase-1) state dict → a checkpoint for ``load_cam_model``; ``query`` is
    the ``query.npy`` of their AAF_RandWeight variant."""
    import torch

    from weaktr.models.cam import CAMNet, convert_official_cam_state, save_cam_model

    state, cfg = convert_official_cam_state(official, query, backbone=backbone, aaf_pool=pool)
    with torch.device("meta"):  # shapes only; load_state_dict(assign=True) brings the weights
        model = CAMNet(cfg)
    model.load_state_dict(state, assign=True)
    save_cam_model(out, model)


def convert_segmenter(official: Path, out: Path, backbone: str) -> None:
    """The authors' Segmenter (phase-2) ``checkpoint.pth`` → a checkpoint for ``load_segmenter``."""
    import torch

    from weaktr.models.segmenter import build_segmenter, convert_official_segmenter_state, save_segmenter

    state, cfg = convert_official_segmenter_state(official, backbone=backbone)
    with torch.device("meta"):
        model = build_segmenter(cfg)
    model.load_state_dict(state, assign=True)
    save_segmenter(out, model)


def execute(args: argparse.Namespace) -> int:
    cfg = load_run_config(args)
    official, out = Path(args.official), Path(args.out)
    if args.query and args.kind != "cam":
        raise InputError("--query belongs to a CAM model (convert cam), not to a segmenter")
    if args.kind == "cam":
        backbone = args.backbone or cfg.cam_model.get("backbone", "deit_small_patch16_224")
        query = Path(args.query) if args.query else None
        convert_cam(official, out, backbone, args.pool or cfg.cam_model.get("aaf_pool", "max"), query)
    else:
        convert_segmenter(
            official, out, args.backbone or cfg.seg_model.get("backbone", "deit_small_patch16_224")
        )
    print(f"{args.kind} model: {out.resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert the authors' CAM or Segmenter checkpoint to weaktr's format",
        description=__doc__,
    )
    p.add_argument("kind", choices=("cam", "segmenter"), help="which network the checkpoint holds")
    p.add_argument("--official", required=True, metavar="PATH", help="the authors' .pth (or .safetensors)")
    p.add_argument("--out", required=True, metavar="PATH", help="output .safetensors")
    p.add_argument("--backbone", help="timm backbone name (default: from the config)")
    p.add_argument(
        "--pool", choices=("max", "avg"), help="AAF pooling of a CAM model (default: from the config)"
    )
    p.add_argument(
        "--query",
        metavar="NPY",
        help="the query.npy of the authors' AAF_RandWeight CAM model (its fixed fusion vector)",
    )
    add_config_args(p)
    p.set_defaults(func=execute)
