"""Deterministic samples of a split: the images the report shows and the report-only scores use.

The views stage, the report and the report-only CAM scores must pick the same images on every call
(and on a resumed run), so the sample is spread evenly over the split's list, never random.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from weaktr.data.info import DatasetInfo
from weaktr.errors import InputError


def spread(ids: Sequence[str], n: int | None) -> list[str]:
    """``n`` ids spread evenly over the list, in list order (all of them when ``n`` is None or ≥ len)."""
    if n is None or len(ids) <= n:
        return list(ids)
    if n <= 0:
        return []
    return [ids[int(i)] for i in np.linspace(0, len(ids) - 1, n).round()]


def present_ids(dataset: DatasetInfo, split: str) -> list[str]:
    """The ids of ``split`` whose image exists (none when the split is unknown), for figures."""
    try:
        ids = dataset.ids(split, check_images=False)
    except InputError:
        return []
    return [i for i in ids if dataset.image_path(i).is_file()]


def view_ids(dataset: DatasetInfo, split: str, n: int) -> list[str]:
    """The labelled images of ``split`` whose CAM and attention views the report shows."""
    labels = dataset.labels()
    return spread([i for i in present_ids(dataset, split) if labels.get(i)], n)
