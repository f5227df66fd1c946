"""``weaktr pretrain [--out PATH] [options]``: pretrain the demo's ViT on the synthetic shapes set.

WeakTr presumes an ImageNet-pretrained backbone; the demo's small conv-stem ViT is pretrained here,
supervised as DeiT was, on a generated 28-class shapes set that shares no class with the demo. The
file is a timm state dict (float16) that ``cam_train.pretrained=PATH`` and ``seg_train.pretrained=PATH``
load like any local weights; its metadata names this command line, the seeds, the data generator,
the epochs and steps, the final accuracies and the weaktr version. ``--objects K`` (K > 1) renders
1..K objects of distinct classes per image and trains multi-label (multilabel soft margin loss, scored
by mAP); the file's metadata then names the multi-object generator and ``objects``. See
docs/pretraining.md.
"""

from __future__ import annotations

import argparse
import shlex

from weaktr.pretrain_settings import POOLS, PretrainSettings

_SIZE_FLAGS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads")
_RECIPE_FLAGS = ("epochs", "batch_size", "n_train", "n_val", "seed", "data_seed", "max_steps", "objects")
_HELP = {
    "img_size": "image size in pixels",
    "n_train": "training images rendered",
    "n_val": "validation images (the index range after the training images)",
    "seed": "seed of the weights, shuffling and augmentation",
    "data_seed": "seed of the shapes generator",
    "max_steps": "stop after N steps (tests, timing; the schedule still spans every epoch)",
    "objects": "most objects per image; above 1: 1..N objects of distinct classes, multi-label loss, mAP",
}


def command_line(args: argparse.Namespace) -> str:
    """The command as parsed, flags in a fixed order: the same run is named the same however it was
    typed (or called from Python), so the file's bytes depend on the settings alone."""
    words = ["weaktr", "pretrain", "--out", str(args.out)]
    for name in ("backbone", "pool", *_SIZE_FLAGS, *_RECIPE_FLAGS, "lr"):
        if getattr(args, name) is not None:
            words += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.no_amp:
        words.append("--no-amp")
    return shlex.join(words)


def execute(args: argparse.Namespace) -> int:
    import torch

    from weaktr.models.execution import ExecutionPolicy
    from weaktr.runtime.context import amp_enabled
    from weaktr.stages.pretrain import accuracy_summary, describe_size, pretrain

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    values = {k: getattr(args, k) for k in (*_SIZE_FLAGS, *_RECIPE_FLAGS, "backbone", "pool", "lr")}
    settings = PretrainSettings(**{k: v for k, v in values.items() if v is not None})
    command = command_line(args)
    policy = ExecutionPolicy.training(device, amp_enabled(device, not args.no_amp, amp_cpu=True))
    result = pretrain(settings, args.out, policy, workers=args.workers, command=command)
    print(f"pretrained backbone: {result.path.resolve()} ({describe_size(result.path)})")
    print(f"  {result.params:,} parameters; {accuracy_summary(result)}")
    arch = settings.architecture()
    sizes = [f"{section}.{k}={arch[k]}" for section in ("cam_model", "seg_model") for k in _SIZE_FLAGS[1:]]
    print(f"  use: cam_train.pretrained={args.out} seg_train.pretrained={args.out} {' '.join(sizes)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain the demo's small ViT on a synthetic shapes set (the demo's ImageNet)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = PretrainSettings()
    p.add_argument("--out", default="demo_vit.safetensors", help="output .safetensors (default: %(default)s)")
    p.add_argument("--backbone", help=f"timm ViT layout and normalisation (default: {d.backbone})")
    for name in _SIZE_FLAGS + _RECIPE_FLAGS:
        flag = "--" + name.replace("_", "-")
        what = _HELP.get(name, name.replace("_", " "))
        p.add_argument(flag, type=int, metavar="N", help=f"{what} (default: {getattr(d, name)})")
    p.add_argument(
        "--pool",
        choices=POOLS,
        help=f"what the head reads: the class token (DeiT) or the mean patch token (default: {d.pool})",
    )
    p.add_argument("--lr", type=float, help=f"AdamW peak learning rate (default: {d.lr})")
    p.add_argument("--workers", type=int, default=2, help="processes rendering the data (default: 2)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--no-amp", action="store_true", help="float32 throughout (default: bf16 where native)")
    p.set_defaults(func=execute)
