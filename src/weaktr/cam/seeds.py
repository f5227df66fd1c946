"""CAM seeds (spec §1.6): a constant background plane t in front of the CAMs, argmax, optional label CRF.

The seeds are dense (no 255): every pixel is background or one of the image's classes. Seeds are
written as PNG label maps, in parallel over images, skipping existing outputs so a stage can resume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from weaktr.cam.generate import ImageSource, read_image_source
from weaktr.crf import CRFParams, label_crf, run_parallel
from weaktr.errors import InputError
from weaktr.io import load_cams, save_label_png
from weaktr.pools import PerItem


def compact_seed(cams: np.ndarray, threshold: float) -> np.ndarray:
    """Index map 0..K (0 = background) of argmax over [t, cams]; ties go to background as in argmax."""
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3:
        raise ValueError(f"CAMs must be (K, H, W), got {cams.shape}")
    background = np.full((1, *cams.shape[1:]), threshold, dtype=np.float32)
    return np.concatenate([background, cams]).argmax(axis=0)


def seed_from_cams(
    cams: np.ndarray,
    classes: np.ndarray,
    threshold: float,
    image: np.ndarray | None = None,
    crf: CRFParams | None = None,
) -> np.ndarray:
    """uint8 seed map of label ids from CAMs of ``classes``; with ``crf``, label-CRF on ``image``.

    The CRF sees n_labels = 1 + K (all present classes, even those that lost every pixel), as the
    authors' code does.
    """
    classes = np.asarray(classes, dtype=np.int64)
    if classes.shape != (np.shape(cams)[0],):
        raise ValueError(f"{len(classes)} classes for CAMs of shape {np.shape(cams)}")
    if classes.size and (classes.min() < 1 or classes.max() > 254):
        raise ValueError(f"seed label ids must lie in 1..254, got {classes.tolist()}")
    compact = compact_seed(cams, threshold)
    if crf is not None:
        if image is None:
            raise ValueError("the label CRF needs the image")
        compact = label_crf(image, compact, len(classes) + 1, crf)
    lut = np.concatenate([[0], classes]).astype(np.uint8)
    return lut[compact]


SeedJob = tuple[Path, Path, float, CRFParams | None, ImageSource | None, list[int] | None]


def _seed_job(job: SeedJob) -> None:
    """One image: read the CAM file, threshold (+CRF), write the PNG. Module-level so it pickles."""
    cam_path, out_path, threshold, crf, image_src, palette = job
    cams, classes = load_cams(cam_path)
    image = read_image_source(image_src) if image_src is not None else None
    if image is not None and image.shape[:2] != cams.shape[1:]:
        raise InputError(f"image is {image.shape[:2]} but its CAMs are {cams.shape[1:]}", cam_path)
    save_label_png(out_path, seed_from_cams(cams, classes, threshold, image, crf), palette)


def _seed_item(job: SeedJob) -> str:
    return f"image {job[0].stem}"


def make_seeds(
    cam_dir: str | Path,
    ids: Sequence[str],
    out_dir: str | Path,
    threshold: float,
    crf: CRFParams | None = None,
    image_paths: Mapping[str, ImageSource] | None = None,
    palette: list[int] | None = None,
    workers: int = 0,
    progress: bool = True,
) -> int:
    """Write ``out_dir/<id>.png`` seeds from ``cam_dir/<id>.npz``; returns how many were written.

    ``image_paths`` (id → path, array or loader) is needed only with a CRF. ``palette`` None writes
    plain single-channel PNGs, as the authors do; ``voc_palette()`` gives coloured ones.
    """
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    todo = [i for i in ids if not (out_dir / f"{i}.png").exists()]
    if crf is not None:
        missing = [i for i in todo if image_paths is None or i not in image_paths]
        if missing:
            raise InputError(
                f"the seed CRF needs images, none given for {len(missing)} ids (first: {missing[0]!r})"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        (
            cam_dir / f"{i}.npz",
            out_dir / f"{i}.png",
            threshold,
            crf,
            image_paths[i] if crf is not None and image_paths is not None else None,
            palette,
        )
        for i in todo
    ]
    run_parallel(PerItem(_seed_job, _seed_item), jobs, workers, desc="seeds", progress=progress)
    return len(jobs)
