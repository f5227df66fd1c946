"""The Python API: load trained (or converted) WeakTr models and get masks, CAMs and class scores.

A few lines are enough, on CPU or GPU::

    from weaktr.api import WeakTr

    model = WeakTr.from_run("runs/demo")    # or WeakTr.load(seg_checkpoint=..., cam_checkpoint=...)
    # backend="onnxruntime": the segmenter exported by ``weaktr export-model`` (CPU, fp32)
    pred = model.predict("photo.jpg")        # pred.mask: uint8 H×W label ids; pred.class_ids
    cams = model.cams("photo.jpg")           # cams.cams: float32 (K, H, W); cams.classes: label ids
    scores = model.class_scores("photo.jpg") # {label id: probability}
    model.predict_folder("photos/", "masks/")  # one palette PNG per image

Label ids follow the project's convention: 0 is background, foreground classes are 1..C, and class
token ``i`` of the CAM network is label id ``i + 1``. Images are file paths, ``PIL.Image``s or
uint8 H×W×3 RGB arrays. Bad input (a missing checkpoint or image) raises
:class:`~weaktr.errors.InputError` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from weaktr.cam.generate import multiscale_cam
from weaktr.config import load_config
from weaktr.crf import CRFParams, softmax_crf
from weaktr.data.folder import IMAGE_EXTS
from weaktr.data.images import load_image
from weaktr.data.palette import voc_palette
from weaktr.errors import InputError
from weaktr.evaluation.inference import InferenceSettings, predict_probs
from weaktr.evaluation.onnx_backend import OrtSegmenter, load_seg_net
from weaktr.io import save_label_png
from weaktr.models.cam import CAMNet, load_cam_model
from weaktr.models.execution import ExecutionPolicy
from weaktr.models.segmenter import Segmenter
from weaktr.models.timm_factory import normalise
from weaktr.runtime.context import run_dataset
from weaktr.runtime.distributed import resolve_device
from weaktr.runtime.layout import RunLayout
from weaktr.runtime.logging import progress

ImageLike = str | Path | np.ndarray | Image.Image


@dataclass
class Prediction:
    """A segmentation of one image.

    ``mask``: uint8 (H, W) label ids. ``probs``: float32 (n_cls, H, W) per-pixel class probabilities
    (the authors' two-layer ensemble, normalised to sum to 1). ``class_ids``: the foreground label
    ids present in ``mask``, ascending.
    """

    mask: np.ndarray
    probs: np.ndarray
    class_ids: list[int]


@dataclass
class CAMResult:
    """Class activation maps of one image.

    ``cams``: float32 (K, H, W), each map min–max scaled to [0, 1] (the maps seeds are made from).
    ``classes``: the K label ids, ascending. ``scores``: float32 (K,) class-token probability of
    each of them.
    """

    cams: np.ndarray
    classes: list[int]
    scores: np.ndarray


def _to_array(image: ImageLike) -> np.ndarray:
    """uint8 H×W×3 RGB from a path, a PIL image or an array."""
    if isinstance(image, str | Path):
        return load_image(image)
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy, as torch wants
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"an image array must be uint8 H×W×3 RGB, got {arr.dtype} {arr.shape}")
    return arr


class WeakTr:
    """A trained WeakTr: the segmenter (masks) and/or the phase-1 CAM network (CAMs, class scores).

    Build it with :meth:`load` or :meth:`from_run`. ``settings`` are the sliding-window inference
    settings (:class:`~weaktr.evaluation.inference.InferenceSettings`; the window and base size
    default to the segmenter's training crop, the stride to two thirds of the window); ``window``,
    ``stride``, ``base_size`` and ``ensemble_weight`` (0 turns the two-layer ensemble off) replace
    single fields of them. The softmax CRF uses ``crf_preset`` with any fields in ``crf_params``
    replaced.
    """

    def __init__(
        self,
        segmenter: Segmenter | OrtSegmenter | None,
        cam_model: CAMNet | None,
        device: torch.device,
        class_names: Sequence[str] | None = None,
        window: int | None = None,
        stride: int | None = None,
        base_size: int | None = None,
        ensemble_weight: float | None = None,
        crf_preset: str = "voc",
        crf_params: dict[str, float] | None = None,
        settings: InferenceSettings | None = None,
    ) -> None:
        if segmenter is None and cam_model is None:
            raise InputError("WeakTr needs a segmenter checkpoint, a CAM checkpoint or both")
        n_cls = segmenter.n_cls if segmenter is not None else cam_model.config.num_classes + 1
        if segmenter is not None and cam_model is not None and cam_model.config.num_classes + 1 != n_cls:
            raise InputError(
                f"the CAM network has {cam_model.config.num_classes} classes but the segmenter "
                f"{n_cls} (background + classes): they come from different data sets"
            )
        names = list(class_names) if class_names is not None else []
        if names and len(names) != n_cls:
            raise InputError(f"{len(names)} class names given for {n_cls} label ids (background included)")
        self.segmenter, self.cam_model, self.device = segmenter, cam_model, device
        self.class_names = names or ["background", *(f"class_{i}" for i in range(1, n_cls))]
        if settings is None and segmenter is not None:
            size = segmenter.cfg.image_size
            win = window or size
            settings = InferenceSettings(window=win, stride=max(1, round(win * 2 / 3)), base_size=size)
        given = dict(window=window, stride=stride, base_size=base_size, ensemble_weight=ensemble_weight)
        self.settings = replace(
            settings or InferenceSettings(), **{k: v for k, v in given.items() if v is not None}
        )
        self.crf_params = CRFParams.build("softmax", crf_preset, crf_params)

    @classmethod
    def load(
        cls,
        seg_checkpoint: str | Path | None = None,
        cam_checkpoint: str | Path | None = None,
        device: str | torch.device = "auto",
        class_names: Sequence[str] | None = None,
        backend: str = "torch",
        fused_cpu: bool = True,
        **settings: Any,
    ) -> WeakTr:
        """Load checkpoints written by ``weaktr run`` (or ``weaktr convert``); either may be left out.

        ``device`` is ``'auto'`` (CUDA when present), ``'cpu'``, ``'cuda'`` or a ``torch.device``.
        ``class_names`` (background first) name the label ids; ``settings`` are the inference
        keywords of :class:`WeakTr`. With ``backend="onnxruntime"`` the segmenter checkpoint is an
        ONNX export (``weaktr export-model``), run by onnxruntime on the CPU. The models run in
        float32; ``fused_cpu`` lets the CPU use the self-checked fused ViT blocks.
        """
        dev = device if isinstance(device, torch.device) else resolve_device(str(device))
        seg, cam = None, None
        if seg_checkpoint is not None:
            seg = load_seg_net(seg_checkpoint, backend, ExecutionPolicy.seg_inference(dev, False, fused_cpu))
        if cam_checkpoint is not None:
            policy = ExecutionPolicy.cam_inference(dev, False, fused_cpu)
            cam = load_cam_model(cam_checkpoint, dev).prepare_inference(policy)
        return cls(seg, cam, dev, class_names, **settings)

    @classmethod
    def from_run(
        cls, run_dir: str | Path, device: str | torch.device = "auto", backend: str = "torch"
    ) -> WeakTr:
        """The models of a run directory, with its class names and its ``predict`` settings.

        ``backend="onnxruntime"`` runs the segmenter's ONNX export (``weaktr export-model RUN_DIR``).
        """
        run_dir, lay = Path(run_dir), RunLayout(Path(run_dir))
        cfg = load_config(lay.config) if lay.config.is_file() else None
        seg, cam = (lay.seg_onnx if backend == "onnxruntime" else lay.seg_model), lay.cam_model
        if not seg.is_file() and lay.seg_model.is_file():
            raise InputError(f"no ONNX export of the segmenter: run 'weaktr export-model {run_dir}'", seg)
        if not seg.is_file() and not cam.is_file():
            raise InputError("no trained model in this run directory (seg/ and cam/ are empty)", run_dir)
        names, settings, fused_cpu = None, {}, True
        if cfg is not None:
            try:
                names = run_dataset(run_dir, cfg.data.dataset).class_names
            except InputError:
                names = None  # the data set moved: fall back to numbered class names
            p = cfg.predict
            fused_cpu = p.fused_cpu
            # scales and flip are chosen per call (predict's arguments); amp stays off as in load
            settings = dict(
                settings=InferenceSettings.from_config(p),
                crf_preset=p.crf_preset,
                crf_params=p.crf_params.set_values(),
            )
        return cls.load(
            seg if seg.is_file() else None,
            cam if cam.is_file() else None,
            device,
            names,
            backend,
            fused_cpu,
            **settings,
        )

    # ---- segmentation --------------------------------------------------------------------------
    def predict(
        self, image: ImageLike, scales: Sequence[float] = (1.0,), flip: bool = False, crf: bool = False
    ) -> Prediction:
        """Segment one image; more ``scales`` and ``flip`` are the slower multi-scale test of the paper.

        ``crf`` refines the mask with the dense CRF of the predictions (needs pydensecrf).
        """
        if self.segmenter is None:
            raise InputError("no segmenter loaded: pass seg_checkpoint= to WeakTr.load")
        arr = _to_array(image)
        settings = replace(self.settings, scales=tuple(scales), flip=flip)
        score = predict_probs(self.segmenter, arr, settings, self.device)
        probs = (score / score.sum(dim=0, keepdim=True)).float().cpu().numpy()
        labels = softmax_crf(arr, probs, self.crf_params) if crf else probs.argmax(axis=0)
        mask = labels.astype(np.uint8)
        return Prediction(mask, probs, sorted(int(c) for c in np.unique(mask) if c != 0))

    def predict_folder(
        self,
        folder: str | Path,
        out_dir: str | Path,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        crf: bool = False,
    ) -> list[Path]:
        """Write ``out_dir/<image stem>.png`` (VOC-palette label maps) for every image in ``folder``."""
        folder, out_dir = Path(folder), Path(out_dir)
        if not folder.is_dir():
            raise InputError("image folder not found", folder)
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if not paths:
            raise InputError(f"no images ({', '.join(IMAGE_EXTS)}) in the folder", folder)
        written = []
        for path in progress(paths, desc="predict"):
            out = out_dir / f"{path.stem}.png"
            save_label_png(out, self.predict(path, scales, flip, crf).mask, voc_palette())
            written.append(out)
        return written

    # ---- phase 1: class scores and CAMs ----------------------------------------------------------
    def _cam_net(self) -> CAMNet:
        if self.cam_model is None:
            raise InputError("no CAM network loaded: pass cam_checkpoint= to WeakTr.load")
        return self.cam_model

    def _class_probs(self, arr: np.ndarray) -> np.ndarray:
        """Sigmoid of the class-token logits (C,) for the whole image at its own size."""
        model = self._cam_net()
        x = normalise(arr, *model.config.normalisation)
        with torch.inference_mode():
            logits = model(x[None].to(self.device)).cls_logits[0]
        return torch.sigmoid(logits.float()).cpu().numpy()

    def class_scores(self, image: ImageLike) -> dict[int, float]:
        """Probability that each class is in the image: ``{label id: sigmoid(class-token logit)}``."""
        probs = self._class_probs(_to_array(image))
        return {i + 1: float(p) for i, p in enumerate(probs)}

    def cams(
        self,
        image: ImageLike,
        label_ids: Sequence[int] | None = None,
        scales: Sequence[float] = (1.0,),
        threshold: float = 0.5,
    ) -> CAMResult:
        """CAMs of ``label_ids`` (default: the classes scoring at least ``threshold``, or else the best one).

        Each scale is run with its horizontal flip and fused exactly as ``weaktr run`` generates CAMs
        (``scales=(1.0, 1.2)`` is the pipeline's setting); the maps are the fine CAM, or the fused CAM
        when the network was trained with ``refine: false``.
        """
        model = self._cam_net()
        arr = _to_array(image)
        probs = self._class_probs(arr)
        if label_ids is None:
            label_ids = [i + 1 for i in np.flatnonzero(probs >= threshold)] or [int(probs.argmax()) + 1]
        mean, std = model.config.normalisation
        cams, classes = multiscale_cam(model, arr, list(label_ids), tuple(scales), mean, std, self.device)
        ids = [int(c) for c in classes]
        return CAMResult(cams.numpy(), ids, probs[[c - 1 for c in ids]].astype(np.float32))
