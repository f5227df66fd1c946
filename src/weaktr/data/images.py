"""Reading images and label maps with errors that name the file, so one bad file in 100k is findable.

Images are returned as they are stored: the EXIF orientation tag is ignored, for images and masks
alike, because VOC / COCO masks (and COCO's polygons) are aligned with the stored pixels and rotating
the photo would misalign them. The data check counts images that carry a rotating tag and says so.
Any mode is converted to 8-bit RGB (see :func:`_to_rgb`); label maps must be palette or greyscale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from weaktr.errors import InputError

# A truncated file must fail loudly instead of silently padding grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_LABEL_MODES = ("P", "L")
_EXIF_ORIENTATION = 0x0112


def _open_decoded(path: Path) -> Image.Image:
    """Open and fully decode ``path`` (PIL decodes lazily, so truncation shows only on load)."""
    if not path.is_file():
        raise InputError("file not found", path)
    if path.stat().st_size == 0:
        raise InputError("empty file (0 bytes)", path)
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"not a readable image ({exc})", path) from exc
    return img


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, YCbCr, 16-bit, float) to uint8 RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit (and 32-bit) grey: scale the 0..65535 range to 0..255 rather than clipping.
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def load_image(path: str | Path) -> np.ndarray:
    """Load an image as uint8 (H, W, 3) RGB; raise :class:`InputError` naming the file otherwise."""
    path = Path(path)
    with _open_decoded(path) as img:
        arr = _to_rgb(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise InputError(f"decoded to an unusable array of shape {arr.shape}", path)
    return arr


def exif_rotates(path: str | Path) -> bool:
    """Whether the file's EXIF orientation tag asks viewers to rotate or flip it (weaktr does not)."""
    with Image.open(path) as img:
        return img.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1)


def load_label_map(
    path: str | Path, expected_hw: tuple[int, int] | None = None, n_cls: int | None = None
) -> np.ndarray:
    """Load a palette / greyscale label PNG as uint8 (H, W) and check its size and ids.

    ``expected_hw`` is the image's (H, W); ``n_cls`` includes background, and 255 (ignore)
    is always allowed. Palette PNGs are read as indices, never as colours.
    """
    path = Path(path)
    with _open_decoded(path) as img:
        if img.mode not in _LABEL_MODES:
            raise InputError(
                f"label map must be a palette (P) or greyscale (L) PNG, got mode {img.mode}", path
            )
        arr = np.asarray(img, dtype=np.uint8).copy()
    if expected_hw is not None and tuple(arr.shape) != tuple(expected_hw):
        raise InputError(
            f"label map size {arr.shape[0]}x{arr.shape[1]} (HxW) does not match the image size "
            f"{expected_hw[0]}x{expected_hw[1]}",
            path,
        )
    if n_cls is not None:
        ids = np.unique(arr)
        bad = ids[(ids >= n_cls) & (ids != 255)]
        if bad.size:
            raise InputError(
                f"label ids {bad.tolist()} are out of range (valid: 0..{n_cls - 1} and 255)", path
            )
    return arr
