"""The segmenter as an ONNX file, and an onnxruntime session that stands in for it during inference.

:func:`export_segmenter` writes ``forward_masks`` with both decoder outputs (``masks``,
``masks_layer1``: the two-layer ensemble needs the second) for any batch, height and width, and
checks the file against PyTorch before keeping it. :class:`OrtSegmenter` has the attributes and
the ``forward_masks`` that :mod:`weaktr.evaluation.inference` asks of a network, so the same
sliding-window, multi-scale, flip and ensemble code runs either backend; only the network call
differs. The export records the checkpoint it came from (path and SHA-256), and loading refuses an
export older than a checkpoint that has changed since.

Only the segmenter is exported: the CAM network's position-embedding resize (bicubic by a scale
factor computed from the grid) is traced as a constant, so its export holds for one input size only.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weaktr import extras
from weaktr.choices import BACKENDS
from weaktr.errors import InputError
from weaktr.io import atomic_write
from weaktr.models.execution import ExecutionPolicy
from weaktr.models.segmenter import SegConfig, Segmenter, load_segmenter

OUTPUTS = ("masks", "masks_layer1")
EXPORT_ATOL = 1e-3  # ONNX vs PyTorch masks (unit-scale LayerNorm outputs) on the check inputs


def require(*modules: str) -> list[Any]:
    """Import the optional ONNX packages, or name the missing ones and the extra that installs them."""
    extras.require("onnx", "ONNX support", *modules)
    return [importlib.import_module(name) for name in modules]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Masks(nn.Module):
    """``forward_masks(x, return_layer1=True)`` as a plain module with tuple outputs, for the exporter."""

    def __init__(self, model: Segmenter) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        final, layer1 = self.model.forward_masks(x, return_layer1=True)
        return final, layer1


def export_segmenter(checkpoint: Path, out: Path) -> Path:
    """Write the segmenter of ``checkpoint`` to ``out`` (one ONNX file, atomic); returns ``out``.

    The example input is one patch larger than the training crop, so the position-grid resize is
    traced (at the crop itself it is the identity and would be skipped); the file is then run at
    the crop and at an odd size and compared with PyTorch.
    """
    onnx, ort, _ = require("onnx", "onnxruntime", "onnxscript")
    model = load_segmenter(checkpoint, "cpu")
    size = model.cfg.image_size + model.patch_size
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    dim = torch.export.Dim.DYNAMIC
    program = torch.onnx.export(
        _Masks(model).eval(),
        (example,),
        dynamo=True,
        input_names=["images"],
        output_names=list(OUTPUTS),
        dynamic_shapes=({0: dim, 2: dim, 3: dim},),
        verbose=False,
    )
    proto = program.model_proto
    meta = {
        "weaktr_model": "segmenter",
        "seg_config": json.dumps(model.cfg.to_dict()),
        "patch_size": str(model.patch_size),
        "mean": json.dumps(list(model.mean)),
        "std": json.dumps(list(model.std)),
        "source": str(Path(checkpoint).resolve()),
        "source_sha256": file_sha256(Path(checkpoint)),
    }
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_write(out) as tmp:
        onnx.save(proto, str(tmp))
        _check_export(model, ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]))
    return Path(out)


def _check_export(model: Segmenter, session: Any) -> None:
    """The exported masks equal PyTorch's at the crop size and at a size off the patch grid."""
    crop = model.cfg.image_size
    gen = torch.Generator().manual_seed(1)
    for shape in ((1, 3, crop, crop), (2, 3, crop + 3, max(model.patch_size, crop // 2 + 5))):
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            want = model.forward_masks(x, return_layer1=True)
        got = session.run(list(OUTPUTS), {"images": x.numpy()})
        for name, g, w in zip(OUTPUTS, got, want, strict=True):
            err = (torch.from_numpy(g) - w).abs().max().item() if g.shape == tuple(w.shape) else float("inf")
            if not err <= EXPORT_ATOL:
                raise RuntimeError(f"ONNX export check failed: {name} at {shape} differs by {err:.3g}")


class OrtSegmenter:
    """An exported segmenter in an onnxruntime CPU session, with what the inference code uses of one.

    fp32 only: ``amp`` and the fused CPU blocks concern the PyTorch backend. ``threads`` defaults to
    torch's thread count, so ``threads:`` in a config holds for both backends.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        (ort,) = require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise InputError("ONNX model not found (write it with 'weaktr export-model RUN_DIR')", path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise InputError(f"not a readable ONNX model ({str(exc).splitlines()[0]})", path) from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("weaktr_model") != "segmenter":
            raise InputError("not a WeakTr segmenter export (no weaktr_model=segmenter metadata)", path)
        source = Path(meta["source"])
        if source.is_file() and file_sha256(source) != meta["source_sha256"]:
            raise InputError(
                f"the export is older than its checkpoint {source}, which has changed since: "
                "re-export with 'weaktr export-model RUN_DIR'",
                path,
            )
        self.path = path
        self.cfg = SegConfig.from_dict(json.loads(meta["seg_config"]))
        self.n_cls = self.cfg.n_cls
        self.patch_size = int(meta["patch_size"])
        self.mean = tuple(json.loads(meta["mean"]))
        self.std = tuple(json.loads(meta["std"]))

    def forward_masks(self, x: torch.Tensor, return_layer1: bool = False) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised images -> [final] or [final, layer-1] masks on the patch grid."""
        names = list(OUTPUTS if return_layer1 else OUTPUTS[:1])
        feed = {"images": x.detach().to("cpu", torch.float32).contiguous().numpy()}
        return [torch.from_numpy(m).to(x.device) for m in self.session.run(names, feed)]

    def precision(self) -> AbstractContextManager[Any]:
        """Nothing: onnxruntime runs the export's float32 graph."""
        return nullcontext()


def load_seg_net(path: str | Path, backend: str, policy: ExecutionPolicy) -> Segmenter | OrtSegmenter:
    """The segmenter of ``path`` for ``backend``: a checkpoint for torch, prepared for inference under
    ``policy``, or an ONNX export for onnxruntime (CPU, float32)."""
    if backend == "torch":
        return load_segmenter(path, policy.device).prepare_inference(policy)
    if backend == "onnxruntime":
        return OrtSegmenter(path)
    raise InputError(f"unknown inference backend {backend!r} (choose from {', '.join(BACKENDS)})")
