"""The data check: every listed image decoded in full, every mask's size and label ids, before training.

A truncated PNG would otherwise pass ``weaktr prepare`` and fail hours later inside a DataLoader
worker. ``prepare`` checks before it writes anything and records the check's fingerprint in
``dataset.yaml`` (``checked``); a run opening a data set without a matching one checks it first. The
fingerprint is taken over what was checked (file names and byte sizes, the class count), so a file
truncated, added or removed since makes the next run check again. The work runs in a process pool.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from weaktr.cores import cap_workers, usable_cores
from weaktr.data.images import exif_rotates, load_image, load_label_map
from weaktr.data.info import DatasetInfo
from weaktr.errors import DataCheckError, InputError
from weaktr.pools import PerItem, process_pool

log = logging.getLogger("weaktr")
MAX_LISTED = 10
_VERSION = "weaktr-data-check-1"


@dataclass(frozen=True)
class FileCheck:
    """One image to decode, its mask if it has one, and the size the image must have if known."""

    image: Path
    mask: Path | None = None
    hw: tuple[int, int] | None = None


def _check_one(job: tuple[FileCheck, int]) -> tuple[InputError | None, bool]:
    """(the problem or None, whether EXIF asks for a rotation). Module-level so it pickles."""
    item, n_cls = job
    try:
        hw = load_image(item.image).shape[:2]
        if item.hw is not None and hw != item.hw:
            raise InputError(
                f"image is {hw[0]}x{hw[1]} (HxW) but its annotations say {item.hw[0]}x{item.hw[1]}",
                item.image,
            )
        if item.mask is not None:
            load_label_map(item.mask, hw, n_cls)
        return None, exif_rotates(item.image)
    except InputError as exc:
        return exc, False


def _check_item(job: tuple[FileCheck, int]) -> str:
    return str(job[0].image)


_checked = PerItem(_check_one, _check_item)  # anything but bad input (a bug) names the file too


def check_files(items: Sequence[FileCheck], n_cls: int, workers: int | None = None) -> None:
    """Decode every image and mask of ``items``; raise :class:`DataCheckError` listing the first problems.

    ``workers`` None uses every core this process may run on (and no more than those); under two
    chunks of files are checked in-process, where starting a pool would cost more than it saves.
    """
    workers = cap_workers(workers or usable_cores(), "data check workers")
    jobs = [(item, n_cls) for item in items]
    chunk = max(32, len(jobs) // (workers * 16))
    results: Iterable[tuple[InputError | None, bool]]
    problems: list[InputError] = []
    rotated = total = 0
    pool = process_pool(workers) if workers > 1 and len(jobs) >= 2 * chunk else None
    try:
        results = pool.map(_checked, jobs, chunksize=chunk) if pool else map(_checked, jobs)
        # tqdm itself, as crf.py does (runtime.logging.progress lives a layer above data/); drawn on a
        # terminal only, so that the problem lines of a log or a pipe stay one line each
        bar = tqdm(results, desc="checking data", total=len(jobs), unit="img", leave=False, disable=None)
        for problem, rotates in bar:
            rotated += rotates
            if problem is not None:
                total += 1
                if len(problems) < MAX_LISTED:
                    problems.append(problem)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if problems:
        raise DataCheckError(problems, total, len(jobs))
    if rotated:
        log.warning(
            "%d of %d images carry an EXIF orientation tag; weaktr uses the stored pixels, unrotated, "
            "for images and masks alike (docs/bad-input.md)",
            rotated,
            len(jobs),
        )


def dataset_items(info: DatasetInfo, ids: Sequence[str] | None = None) -> list[FileCheck]:
    """What to check of ``info``: every image of ``ids`` (default: of every split) and its mask if any."""
    if ids is None:
        ids = list(dict.fromkeys(i for split in info.splits for i in info.ids(split, check_images=False)))
    masks = info.path(info.masks) if info.masks is not None else None
    items = []
    for i in ids:
        mask = masks / f"{i}.png" if masks is not None else None
        items.append(FileCheck(info.image_path(i), mask if mask is not None and mask.is_file() else None))
    return items


def fingerprint(items: Sequence[FileCheck], n_cls: int) -> str:
    """A digest of what a check covered: file names and byte sizes (a truncated file changes it).

    Independent of the order of ``items``, which depends on how the splits list the ids.
    """
    lines = []
    for item in items:
        sizes = [p.stat().st_size if p is not None and p.is_file() else -1 for p in (item.image, item.mask)]
        mask = item.mask.name if item.mask is not None else "-"
        lines.append(f"{item.image.name} {sizes[0]} {mask} {sizes[1]}\n")
    digest = hashlib.sha256(f"{_VERSION} {n_cls}\n".encode())
    for line in sorted(lines):
        digest.update(line.encode())
    return digest.hexdigest()[:32]


def check_dataset(info: DatasetInfo, ids: Sequence[str] | None = None, workers: int | None = None) -> str:
    """Check every file of ``info`` (see :func:`dataset_items`); returns the fingerprint to record."""
    items = dataset_items(info, ids)
    check_files(items, info.n_cls, workers)
    return fingerprint(items, info.n_cls)
