"""Multi-scale + flip CAM generation (spec §1.6): one ``.npz`` of normalised per-class maps per image.

The fusion follows the authors' generator exactly (bicubic PIL resize per scale, each with its flip,
bilinear upsampling to the image's size (theirs: the first scale's, 1.0 in their lists), label
masking, flip-back, a plain *sum* in dataset order, then per-class min–max with ε = 1e-8), because
the seed threshold (0.43 / 0.42) was tuned on that normalisation. Unlike the authors' code, images
of equal size are batched together, keeping one patch attention and one label vector per image.

The generator calls the CAM network's public forward and picks maps from its output
(:meth:`~weaktr.models.cam.CAMOutput.cam`); how the network computes (device, dtypes, the fused CPU
blocks) is the policy it was prepared with (:meth:`~weaktr.models.cam.CAMNet.prepare_inference`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from weaktr.choices import CAM_KINDS
from weaktr.cores import cap_workers
from weaktr.data.loader import ItemLoader
from weaktr.errors import InputError
from weaktr.io import save_cams
from weaktr.models.cam import CAMNet
from weaktr.models.timm_factory import normalise
from weaktr.pools import PerItem

MINMAX_EPS = 1e-8
# CAM_KINDS (weaktr.choices): 'default' = the model's own choice (refined fine CAM, or
# CA ⊙ ReLU(coarse) when refine is off); 'coarse' = ReLU(coarse CAM); 'fused' = CA ⊙ ReLU(coarse);
# 'refined' = PA · fused.
# A good cap on the input pixels of the images batched together: one VOC image at scales 1.0 and 1.2
# (the stacked attention maps of 4 inputs are ~1 GB) or about twenty 96 px demo images.
DEFAULT_MAX_PIXELS = 1 << 19

ImageSource = str | Path | np.ndarray | Callable[[], np.ndarray]


def resize_bicubic(image: np.ndarray, scale: float) -> np.ndarray:
    """PIL bicubic resize to (round(W·s), round(H·s)), Python rounding, as the authors' dataset does."""
    h, w = image.shape[:2]
    size = (round(w * scale), round(h * scale))
    if size == (w, h):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


def preprocess_scales(
    image_uint8: np.ndarray, scales: Sequence[float], mean: Sequence[float], std: Sequence[float]
) -> list[torch.Tensor]:
    """One normalised (3, h_s, w_s) tensor per scale, unflipped (flips are made on the batch)."""
    if image_uint8.ndim != 3 or image_uint8.shape[2] != 3 or image_uint8.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 image, got {image_uint8.dtype} {image_uint8.shape}")
    if not scales:
        raise ValueError("at least one scale is needed")
    return [normalise(resize_bicubic(image_uint8, s), mean, std) for s in scales]


def fuse_cams(
    maps_per_input: Sequence[torch.Tensor],
    flips: Sequence[bool],
    labels: torch.Tensor,
    out_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse per-input low-resolution CAMs (C, h, w) into normalised maps of the present classes.

    ``labels`` is the (C,) image label vector; classes with a label > 0 are kept, in ascending order.
    Returns ``(cams, sums)``, both (K, H, W) float32: the min–max normalised maps and the raw sums.
    """
    if len(maps_per_input) != len(flips) or not maps_per_input:
        raise ValueError("need one flip flag per input map and at least one map")
    present = torch.nonzero(labels > 0).flatten().to(maps_per_input[0].device)
    if len(present) == 0:
        empty = maps_per_input[0].new_zeros((0, *out_size), dtype=torch.float32)
        return empty, empty.clone()
    weights = labels.to(maps_per_input[0].device, torch.float32)[present][:, None, None]
    total: torch.Tensor | None = None
    for cam, flipped in zip(maps_per_input, flips, strict=True):
        up = F.interpolate(cam[present].float()[None], size=out_size, mode="bilinear", align_corners=False)[0]
        up = up * weights
        if flipped:
            up = up.flip(-1)
        total = up if total is None else total + up
    assert total is not None
    flat = total.flatten(1)
    lo, hi = flat.amin(dim=1)[:, None, None], flat.amax(dim=1)[:, None, None]
    return (total - lo) / (hi - lo + MINMAX_EPS), total


def label_vector(label_ids: Sequence[int], num_classes: int) -> torch.Tensor:
    """Multi-hot (C,) vector from foreground label ids 1..C (label id = class-token index + 1)."""
    vec = torch.zeros(num_classes, dtype=torch.float32)
    for lid in label_ids:
        if not 1 <= int(lid) <= num_classes:
            raise InputError(f"label id {lid} is outside 1..{num_classes} for this model")
        vec[int(lid) - 1] = 1.0
    return vec


@dataclass
class PreparedImage:
    """One image ready for the network: its scaled inputs (unflipped), labels and its own (H, W)."""

    image_id: str
    label_ids: list[int]
    inputs: list[torch.Tensor]
    size: tuple[int, int]

    @property
    def pixels(self) -> int:
        return sum(x.shape[-2] * x.shape[-1] for x in self.inputs)


def prepare_image(
    image_id: str,
    image: np.ndarray,
    label_ids: Sequence[int],
    scales: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
) -> PreparedImage:
    """Resize and normalise once, so batching and DataLoader workers handle ready tensors."""
    inputs = preprocess_scales(image, scales, mean, std)
    return PreparedImage(image_id, [int(i) for i in label_ids], inputs, (image.shape[0], image.shape[1]))


def batch_cams(
    model: CAMNet,
    images: Sequence[PreparedImage],
    device: torch.device,
    kind: str = "default",
    flip: bool = True,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Multi-scale (+ flip) CAMs of several images with one forward per distinct input size.

    Every input of the same size (an image's scale and its flip, equal scales, other images of that
    size) shares one forward; each keeps its own patch attention and label vector, since the model
    works per sample. Returns ``(cams, classes)`` per image, as :func:`multiscale_cam`.
    """
    return [per_kind[kind] for per_kind in batch_cam_kinds(model, images, device, (kind,), flip)]


def batch_cam_kinds(
    model: CAMNet,
    images: Sequence[PreparedImage],
    device: torch.device,
    kinds: Sequence[str] = ("default",),
    flip: bool = True,
) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """:func:`batch_cams` for several CAM kinds from the same forwards: per image, kind → result."""
    labels = [label_vector(p.label_ids, model.config.num_classes) for p in images]
    views = (False, True) if flip else (False,)
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for n, p in enumerate(images):
        if labels[n].any():  # an image without labels has nothing to localise: no forward
            for i, x in enumerate(p.inputs):
                groups.setdefault((x.shape[-2], x.shape[-1]), []).append((n, i))
    maps: dict[tuple[str, int, int, bool], torch.Tensor] = {}
    with torch.inference_mode():
        for members in groups.values():
            batch = [
                images[n].inputs[i].flip(-1) if v else images[n].inputs[i] for n, i in members for v in views
            ]
            out = model(torch.stack(batch).to(device))
            keys = [(n, i, v) for n, i in members for v in views]
            for kind in kinds:
                cam = out.cam(kind).float()
                maps.update(((kind, *k), c) for k, c in zip(keys, cam, strict=True))
        # Fusion stays in float32 even under AMP: the min–max step amplifies rounding (golden README).
        results: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
        for n, p in enumerate(images):
            # The image's own size: the authors upsample to the first scale's, which is the same for
            # their scale lists (1.0 first); any other first scale would misalign the CAMs with the masks
            out_size = p.size
            classes = torch.nonzero(labels[n] > 0).flatten() + 1
            if len(classes) == 0:
                empty = torch.zeros((0, *out_size), dtype=torch.float32)
                results.append({kind: (empty, classes) for kind in kinds})
                continue
            order = [(n, i, v) for i in range(len(p.inputs)) for v in views]  # the authors' sum order
            per_kind = {}
            for kind in kinds:
                cams, _ = fuse_cams(
                    [maps[(kind, *k)] for k in order], [k[2] for k in order], labels[n].to(device), out_size
                )
                per_kind[kind] = (cams.cpu(), classes)
            results.append(per_kind)
    return results


def multiscale_cam(
    model: CAMNet,
    image: np.ndarray,
    label_ids: Sequence[int],
    scales: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    kind: str = "default",
    flip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-scale + flip CAMs of one image; the model must be in eval mode.

    Returns ``(cams, classes)``: float32 (K, H, W) on the CPU at the image's size and the int64
    label ids of the K present classes (ascending). ``kind`` picks the fused map (:data:`CAM_KINDS`).
    """
    prepared = prepare_image("", image, label_ids, scales, mean, std)
    return batch_cams(model, [prepared], device, kind, flip)[0]


def read_image_source(source: ImageSource) -> np.ndarray:
    """An image from an array, a zero-argument loader, or a path (via ``weaktr.data.images``)."""
    if isinstance(source, np.ndarray):
        return source
    if callable(source):
        return source()
    from weaktr.data.images import load_image

    return load_image(source)


def _prepare_job(
    job: tuple[str, ImageSource, Sequence[int], Sequence[float], Sequence[float], Sequence[float]],
) -> PreparedImage:
    image_id, source, label_ids, scales, mean, std = job
    return prepare_image(image_id, read_image_source(source), label_ids, scales, mean, std)


def _job_item(job: tuple[Any, ...]) -> str:
    return f"image {job[0]}"


class _PrepareDataset(torch.utils.data.Dataset):
    """Reading and resizing in DataLoader workers, so the network never waits for JPEG decoding."""

    def __init__(self, jobs: list[Any]) -> None:
        self.jobs = jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def item_name(self, index: int) -> str:
        return _job_item(self.jobs[index])

    def __getitem__(self, index: int) -> PreparedImage:
        return _prepare_job(self.jobs[index])


def _identity(x: PreparedImage) -> PreparedImage:
    return x


def _chunks(prepared: Iterable[PreparedImage], max_pixels: int) -> Iterator[list[PreparedImage]]:
    """Consecutive images whose inputs hold at most ``max_pixels`` together (always at least one).

    When reading an image fails, the images read before it are still handed out, then the error is
    raised, so every image before a broken file gets its output.
    """
    pending: list[PreparedImage] = []
    pixels = 0
    try:
        for p in prepared:
            if pending and pixels + p.pixels > max_pixels:
                yield pending
                pending, pixels = [], 0
            pending.append(p)
            pixels += p.pixels
    except Exception:
        if pending:
            yield pending
        raise
    if pending:
        yield pending


@dataclass(frozen=True)
class CamGenSettings:
    """What CAMs to make: the scales (each with its flip when ``flip``), the ``kind`` written to the
    output folder (:data:`CAM_KINDS`), the input pixels batched together (``max_pixels``; 0 = one image
    per batch; stages use :data:`DEFAULT_MAX_PIXELS`) and the DataLoader workers that read and resize
    the images (at most one per usable core: :func:`weaktr.cores.cap_workers`)."""

    scales: tuple[float, ...] = (1.0,)
    kind: str = "default"
    flip: bool = True
    max_pixels: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))


def generate_cams(
    model: CAMNet,
    items: Sequence[tuple[str, ImageSource, Sequence[int]]],
    out_dir: str | Path,
    settings: CamGenSettings,
    device: torch.device,
    progress: bool = True,
    also: Mapping[str, str | Path] | None = None,
) -> int:
    """Write ``out_dir/<id>.npz`` for each of ``items`` (id, image, label ids); returns how many were written.

    Existing outputs are skipped, so a killed job resumes where it stopped; a caller under torchrun
    passes its rank's share. Consecutive images are batched while their scaled inputs hold at most
    ``settings.max_pixels`` pixels, and inputs of equal size then share a forward. ``also`` maps
    further CAM kinds to their folders, written from the same forwards. Images are normalised with
    the network's own mean and std.
    """
    kind = settings.kind
    if kind in (also or {}):
        raise ValueError(f"CAM kind {kind!r} is both the main output and in 'also'")
    dirs = {kind: Path(out_dir), **{k: Path(d) for k, d in (also or {}).items()}}
    unknown = [k for k in dirs if k not in CAM_KINDS]
    if unknown:
        raise InputError(f"unknown CAM kind {unknown[0]!r}; choose one of {', '.join(CAM_KINDS)}")
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    todo = [it for it in items if not all((d / f"{it[0]}.npz").exists() for d in dirs.values())]
    mean, std = model.config.normalisation
    scales = list(settings.scales)
    jobs = [(str(i), src, list(lab), scales, list(mean), list(std)) for i, src, lab in todo]
    prepared: Iterable[PreparedImage]
    num_workers = cap_workers(settings.num_workers, "cam_gen.num_workers")
    if num_workers > 0 and len(jobs) > 1:
        prepared = ItemLoader(
            _PrepareDataset(jobs), batch_size=None, num_workers=num_workers, collate_fn=_identity
        )
    else:
        prepared = map(PerItem(_prepare_job, _job_item), jobs)
    model.eval()
    written = 0
    with tqdm(total=len(jobs), desc="gen-cam", unit="img", disable=not progress) as bar:
        for chunk in _chunks(prepared, settings.max_pixels):
            results = batch_cam_kinds(model, chunk, device, tuple(dirs), settings.flip)
            for p, per_kind in zip(chunk, results, strict=True):
                for k, (cams, classes) in per_kind.items():
                    save_cams(dirs[k] / f"{p.image_id}.npz", cams.numpy(), classes.numpy())
            written += len(chunk)
            bar.update(len(chunk))
    return written
