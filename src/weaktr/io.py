"""The project's file formats, all written atomically: JSON, label PNGs, checkpoints, CAMs, probabilities.

Checkpoints are safetensors with the config that rebuilds the model in their metadata.

Every writer goes through :func:`atomic_write` so that a killed job never leaves a half file under
the final name: readers (and the stage-skipping logic of ``weaktr run``) can trust any file they see.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, safe_open, save_file

from weaktr.errors import InputError

CONFIG_KEY = "weaktr_config"


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (NaN allowed, as Python's json module reads it back)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", path) from exc


def save_label_png(path: str | Path, labels: np.ndarray, palette: list[int] | None = None) -> None:
    """Save a uint8 label map as a (palette) PNG atomically."""
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {arr.shape}")
    img = Image.fromarray(arr.astype(np.uint8), mode="P" if palette is not None else "L")
    if palette is not None:
        img.putpalette(palette)
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")


def save_checkpoint(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    metadata: dict[str, str] | None = None,
) -> None:
    """Save weights as safetensors with the JSON config that rebuilds the model in the file's metadata."""
    meta = {CONFIG_KEY: json.dumps(config)}
    meta.update(metadata or {})
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load (state_dict, config) from a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise InputError(f"not a readable safetensors checkpoint ({exc})", path) from exc
    if CONFIG_KEY not in meta:
        raise InputError(
            f"safetensors file has no '{CONFIG_KEY}' metadata; convert it with 'weaktr convert' first", path
        )
    return state, json.loads(meta[CONFIG_KEY])


def save_cams(path: str | Path, cams: torch.Tensor | np.ndarray, classes: torch.Tensor | np.ndarray) -> None:
    """Write one image's CAMs atomically: ``cams`` float16 (K, H, W), ``classes`` int64 label ids."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f, cams=np.asarray(cams, dtype=np.float16), classes=np.asarray(classes, dtype=np.int64)
        )


def load_cams(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(cams float32 (K, H, W), classes int64 (K,))`` from a file written by :func:`save_cams`."""
    path = Path(path)
    if not path.is_file():
        raise InputError("CAM file not found (run gen-cam first)", path)
    try:
        with np.load(path, allow_pickle=False) as data:
            cams, classes = data["cams"].astype(np.float32), data["classes"].astype(np.int64)
    except Exception as exc:  # zipfile, pickle and key errors all mean a damaged file
        raise InputError(f"not a readable CAM .npz file ({exc})", path) from exc
    if cams.ndim != 3 or classes.shape != (cams.shape[0],):
        raise InputError(
            f"CAM file has cams {cams.shape} and classes {classes.shape}; expected (K,H,W), (K,)", path
        )
    return cams, classes


def write_probs(path: Path, probs: np.ndarray, classes: np.ndarray) -> None:
    """Write one image's present-class probabilities (float16) and their label ids, atomically."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f, probs=np.asarray(probs, dtype=np.float16), classes=np.asarray(classes, dtype=np.int64)
        )


def save_views(path: str | Path, maps: dict[str, np.ndarray], aaf: np.ndarray) -> None:
    """Write one image's display maps (each (H, W) in [0, 1], stored float16) and its AAF weights."""
    names = list(maps)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            names=np.asarray(names, dtype=str),
            maps=np.stack([np.asarray(maps[n], dtype=np.float16) for n in names]),
            aaf=np.asarray(aaf, dtype=np.float32),
        )


def load_views(path: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Read ``({name: map float32 (H, W)}, aaf float32)`` from a file written by :func:`save_views`."""
    path = Path(path)
    if not path.is_file():
        raise InputError("views file not found (run the views stage)", path)
    try:
        with np.load(path, allow_pickle=False) as data:
            names, maps, aaf = [str(n) for n in data["names"]], data["maps"].astype(np.float32), data["aaf"]
    except Exception as exc:  # zipfile, pickle and key errors all mean a damaged file
        raise InputError(f"not a readable views .npz file ({exc})", path) from exc
    if maps.ndim != 3 or len(names) != maps.shape[0]:
        raise InputError(f"views file has {len(names)} names for maps of shape {maps.shape}", path)
    return dict(zip(names, maps, strict=True)), aaf.astype(np.float32)
