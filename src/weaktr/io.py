"""The project's file formats, all written atomically: JSON, label PNGs, checkpoints, CAMs, probabilities.

Checkpoints are safetensors with the config that rebuilds the model in their metadata.

Every writer goes through :func:`atomic_write` so that a killed job never leaves a half file under
the final name: readers (and the stage-skipping logic of ``weaktr run``) can trust any file they see.
The temporary a kill leaves instead has one recognisable name, which :func:`sweep_temporaries` removes.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from safetensors.torch import load_file, safe_open

from weaktr.errors import InputError

CONFIG_KEY = "weaktr_config"


# atomic_write's temporary beside ``<name>``: ``.<name>.<random>.tmp<suffix of name>``, the random
# part as tempfile.mkstemp draws it (8 of lower-case letters, digits and '_')
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^.]*)?$")


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


def is_temporary(name: str) -> bool:
    """Whether a file name is one :func:`atomic_write` gives its temporaries."""
    m = _TEMPORARY.match(name)
    return m is not None and (m["suffix"] or "") == Path(m["name"]).suffix


def sweep_temporaries(root: str | Path) -> int:
    """Remove the temporaries that killed writers left under ``root``; returns how many there were.

    Only files named as :func:`atomic_write` names them, and only under ``root``: symlinked folders
    (an ablation variant's links into its base run) are not entered. Call it while nothing writes
    there, e.g. on the main rank before the other ranks start.
    """
    removed = 0
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if is_temporary(name) and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


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
    data = safetensors.torch.save(tensors, metadata=meta)
    with atomic_write(path) as tmp:
        tmp.write_bytes(canonical_safetensors(data))


def canonical_safetensors(data: bytes) -> bytes:
    """The same file with its metadata keys sorted: safetensors writes them in hash-map order, which
    changes from call to call, so equal weights would otherwise not give equal bytes."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes; keep the data aligned
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


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
            f"safetensors file has no '{CONFIG_KEY}' metadata; convert the authors' checkpoint with "
            "'weaktr convert cam --official PATH --out FILE' (or 'convert segmenter') first",
            path,
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


# What ``np.save`` of a dict of numeric arrays pickles: the array rebuilder, ndarray and dtype. The
# rebuilder is taken from numpy itself; numpy 1.x files name it under ``numpy.core``, numpy 2 under
# ``numpy._core``.
_REBUILD_ARRAY = np.empty(0).__reduce__()[0]
_NPY_DICT_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _REBUILD_ARRAY,
    ("numpy._core.multiarray", "_reconstruct"): _REBUILD_ARRAY,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayDictUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays and plain containers, and refuses every other global.

    A pickle runs code only through the globals it names (``os.system`` in ``__reduce__``, say), so
    refusing all but the array rebuilders means a hostile file fails before anything of it runs.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _NPY_DICT_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is refused") from None


def read_npy_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read an ``np.save``-d dict of str → numeric array (e.g. the authors' ``cls_labels.npy``) safely.

    ``np.load(allow_pickle=True)`` would run whatever the pickle names; this reads the ``.npy`` header
    itself and unpickles with :class:`_ArrayDictUnpickler`, then checks the result is such a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    fmt = np.lib.format
    try:
        with path.open("rb") as f:
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version} is not supported")
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read_header(f)
            if dtype.kind != "O":
                raise ValueError(f"it holds a plain {dtype} array of shape {shape}")
            obj = _ArrayDictUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # a damaged pickle raises almost any type; all mean an unusable file
        raise InputError(f"not a pickled dict of arrays ({exc})", path) from exc
    table = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    if not isinstance(table, dict):
        raise InputError(f"not a pickled dict of arrays (it holds a {type(table).__name__})", path)
    bad = [
        repr(k)
        for k, v in table.items()
        if not isinstance(k, str) or not isinstance(v, np.ndarray) or v.dtype.kind not in "biuf"
    ]
    if bad:
        raise InputError(f"not a dict of str -> numeric array (entries {', '.join(bad[:3])} are not)", path)
    return table


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
