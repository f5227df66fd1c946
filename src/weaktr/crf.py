"""Dense CRFs with pydensecrf: the label CRF that refines CAM seeds and the softmax CRF of predictions.

The parameters are the authors' (spec §1.6 and §2.5). pydensecrf is an optional dependency (the
``crf`` extra), imported only when a CRF actually runs. ``run_parallel`` spreads per-image work over
a process pool, since the CRF is single-threaded C++ and dominates the seed and predict stages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from types import ModuleType
from typing import Any, Literal, TypeVar

import numpy as np
from tqdm import tqdm

from weaktr.cores import cap_workers
from weaktr.errors import InputError
from weaktr.extras import load
from weaktr.pools import process_pool

T = TypeVar("T")
R = TypeVar("R")
CRF_NEEDS = "the dense CRF"  # what the missing-extra error says needs pydensecrf
CRFKind = Literal["label", "softmax"]  # the seeds' CRF on hard labels, the predictions' on scores


@dataclass(frozen=True)
class CRFParams:
    """Pairwise terms and iterations of a dense CRF; ``gt_prob`` is used by the label CRF only."""

    gauss_sxy: float
    gauss_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    iterations: int = 10
    gt_prob: float = 0.7

    @classmethod
    def voc_label(cls) -> CRFParams:
        """Seed CRF on VOC (``crf_inference_label``)."""
        return cls(4, 3, 83, 5, 3)

    @classmethod
    def coco_label(cls) -> CRFParams:
        """Seed CRF on COCO."""
        return cls(3, 3, 50, 5, 10)

    @classmethod
    def voc_softmax(cls) -> CRFParams:
        """Prediction CRF on VOC (``make_crf``)."""
        return cls(3, 3, 83, 5, 3)

    @classmethod
    def coco_softmax(cls) -> CRFParams:
        """Prediction CRF on COCO (deeplab-pytorch values)."""
        return cls(1, 3, 67, 3, 4)

    @classmethod
    def preset(cls, name: str, **overrides: float) -> CRFParams:
        """A preset by name (``voc_label``, ``coco_label``, ``voc_softmax``, ``coco_softmax``), with
        any of its fields replaced by ``overrides``."""
        presets = {
            "voc_label": cls.voc_label,
            "coco_label": cls.coco_label,
            "voc_softmax": cls.voc_softmax,
            "coco_softmax": cls.coco_softmax,
        }
        if name not in presets:
            raise InputError(f"unknown CRF preset {name!r}; choose one of {sorted(presets)}")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(f"unknown CRF parameters {unknown}; known: {[f.name for f in fields(cls)]}")
        return replace(presets[name](), **overrides)

    @classmethod
    def build(cls, kind: CRFKind, preset: str, overrides: Mapping[str, float] | None = None) -> CRFParams:
        """The one way a CRF is configured (seeds: ``label``, predictions and the API: ``softmax``): the
        ``preset`` (``voc``, ``coco``) of that kind with the fields in ``overrides`` replaced."""
        return cls.preset(f"{preset}_{kind}", **(overrides or {}))


def _pydensecrf() -> tuple[ModuleType, ModuleType]:
    """pydensecrf's two modules, imported on first use, or the one-line install hint (the crf extra)."""
    return load("crf", CRF_NEEDS, "pydensecrf.densecrf"), load("crf", CRF_NEEDS, "pydensecrf.utils")


def _check_image(image: np.ndarray, hw: tuple[int, ...]) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"CRF image must be H×W×3 uint8, got {image.dtype} {image.shape}")
    if image.shape[:2] != hw:
        raise ValueError(f"CRF image is {image.shape[:2]} but the labels/probabilities are {hw}")
    # pydensecrf needs a writable C-contiguous buffer (np.asarray of a PIL image is read-only)
    return np.ascontiguousarray(image) if image.flags.writeable else image.copy(order="C")


def _infer(unary: np.ndarray, image: np.ndarray, n_labels: int, params: CRFParams) -> np.ndarray:
    """Mean-field inference; returns the argmax index map (H, W) int64."""
    dcrf, _ = _pydensecrf()
    h, w = image.shape[:2]
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    d.addPairwiseBilateral(
        sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=image, compat=params.bilateral_compat
    )
    q = np.array(d.inference(params.iterations)).reshape(n_labels, h, w)
    return q.argmax(axis=0)


def label_crf(
    image_uint8: np.ndarray, labels_compact: np.ndarray, n_labels: int, params: CRFParams
) -> np.ndarray:
    """Refine a compact label map (values 0..n_labels−1) with a hard-label unary; returns int64 (H, W)."""
    labels = np.asarray(labels_compact)
    image = _check_image(image_uint8, labels.shape)
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"compact labels must lie in 0..{n_labels - 1}")
    if n_labels < 2:  # one label: nothing to decide (and the unary would divide by zero)
        return np.zeros(labels.shape, dtype=np.int64)
    _, dutils = _pydensecrf()
    unary = dutils.unary_from_labels(
        labels.astype(np.int64), n_labels, gt_prob=params.gt_prob, zero_unsure=False
    )
    return _infer(unary, image, n_labels, params)


def softmax_crf(image_uint8: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """Refine class scores (K, H, W) with a −log p unary; returns the argmax index map int64 (H, W)."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"probabilities must be (K, H, W) with K ≥ 1, got {probs.shape}")
    image = _check_image(image_uint8, probs.shape[1:])
    if probs.shape[0] == 1:
        return np.zeros(probs.shape[1:], dtype=np.int64)
    _, dutils = _pydensecrf()
    return _infer(dutils.unary_from_softmax(probs), image, probs.shape[0], params)


def run_parallel(
    fn: Callable[[T], R], jobs: Iterable[T], workers: int, desc: str = "", progress: bool = True
) -> list[R]:
    """``[fn(j) for j in jobs]`` over a process pool (``workers`` ≤ 1 runs in-process), in job order.

    ``fn`` and the jobs must be picklable (a module-level function and plain data). ``workers`` is
    lowered to the usable cores.
    """
    jobs = list(jobs)
    workers = cap_workers(workers, f"{desc or 'pool'} workers")
    bar: Any = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress)
    results: list[R] = []
    with bar:
        if workers <= 1:
            for job in jobs:
                results.append(fn(job))
                bar.update()
        else:
            with process_pool(workers) as pool:
                chunk = max(1, len(jobs) // (workers * 8))
                for res in pool.map(fn, jobs, chunksize=chunk):
                    results.append(res)
                    bar.update()
    return results
