"""Resumable training state without pickles: one safetensors file, scalars in its JSON metadata.

Tensors: ``model.<key>`` (weights and buffers), ``optim.state.<param_idx>.<name>`` (optimiser state),
``rng.torch`` / ``rng.cuda.<i>`` / ``rng.gen.<name>`` (RNG states as uint8) and ``rng.numpy`` (numpy's
MT19937 key). Metadata: epoch, step, the optimiser's param-group hyper-parameters, non-tensor
optimiser state, the python and numpy RNG scalars, and the caller's JSON ``extra``. Restoring all of
it lets a resumed run continue bit-identically (tests/test_state.py checks this).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from weaktr.errors import InputError
from weaktr.io import atomic_write
from weaktr.runtime.distributed import unwrap_model

STATE_KEY = "weaktr_training_state"
FORMAT_VERSION = 1


def capture_rng_states(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The python, numpy, torch CPU and CUDA RNG states, plus named generators (e.g. a DataLoader's)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": np_state[1].copy(),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def restore_rng_states(states: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng_states`; CUDA states are restored only where devices exist."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state(
        ("MT19937", np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"][: torch.cuda.device_count()])
    for name, g in (generators or {}).items():
        if name not in states["generators"]:
            raise KeyError(f"training state has no RNG state for generator {name!r}")
        g.set_state(states["generators"][name])


def _cpu_copy(t: torch.Tensor) -> torch.Tensor:
    # a fresh contiguous copy: safetensors refuses tensors that share storage (tied weights)
    return t.detach().to("cpu", copy=True).contiguous()


def save_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    rng_states: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write everything a resumed run needs, atomically. ``rng_states`` defaults to the current ones."""
    rng = rng_states if rng_states is not None else capture_rng_states()
    tensors = {f"model.{k}": _cpu_copy(v) for k, v in unwrap_model(model).state_dict().items()}
    opt = optimizer.state_dict()
    scalar_state: dict[str, dict[str, Any]] = {}
    for idx, entries in opt["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.state.{idx}.{name}"] = _cpu_copy(value)
            else:
                scalar_state.setdefault(str(idx), {})[name] = value
    tensors["rng.torch"] = rng["torch"].clone()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(rng["numpy"]["keys"], dtype=np.int64))
    for i, s in enumerate(rng["cuda"]):
        tensors[f"rng.cuda.{i}"] = s.clone()
    for name, s in rng["generators"].items():
        tensors[f"rng.gen.{name}"] = s.clone()
    version, internal, gauss = rng["python"]
    meta = {
        "format": FORMAT_VERSION,
        "epoch": epoch,
        "step": step,
        "param_groups": opt["param_groups"],
        "optimizer_scalars": scalar_state,
        "rng_python": [version, list(internal), gauss],
        "rng_numpy": {k: v for k, v in rng["numpy"].items() if k != "keys"},
        "extra": extra or {},
    }
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(meta)})


def _restore_types(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    # JSON turned tuples (Adam's betas) into lists; give them back the optimiser's own types
    return {k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()}


def read_state_extra(path: str | Path) -> dict[str, Any]:
    """The ``extra`` dict of a saved training state, read from its header without loading tensors,
    so a run can check that it matches before any weights are touched."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(json.loads((f.metadata() or {})[STATE_KEY]).get("extra", {}))
    except (KeyError, json.JSONDecodeError) as exc:
        raise InputError("not a weaktr training state (no metadata)", path) from exc
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise InputError(f"not a readable safetensors file ({exc})", path) from exc


def load_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
    generators: dict[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    """Load weights, optimiser state and (by default) RNG states in place.

    Returns ``{'epoch', 'step', 'extra', 'rng_states'}``; ``epoch`` and ``step`` are what was passed
    to :func:`save_training_state`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("training state not found", path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[STATE_KEY])
        tensors = load_file(str(path))
    except (KeyError, json.JSONDecodeError) as exc:
        raise InputError("not a weaktr training state (no metadata)", path) from exc
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise InputError(f"not a readable safetensors file ({exc})", path) from exc

    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    unwrap_model(model).load_state_dict(weights)

    if optimizer is not None:
        state: dict[int, dict[str, Any]] = {}
        for idx, entries in meta["optimizer_scalars"].items():
            state.setdefault(int(idx), {}).update(entries)
        for key, value in tensors.items():
            if key.startswith("optim.state."):
                idx, name = key[len("optim.state.") :].split(".", 1)
                state.setdefault(int(idx), {})[name] = value
        current = optimizer.state_dict()["param_groups"]
        if len(current) != len(meta["param_groups"]):
            raise InputError(
                f"optimizer has {len(current)} parameter groups, the saved state {len(meta['param_groups'])}",
                path,
            )
        groups = [_restore_types(s, c) for s, c in zip(meta["param_groups"], current, strict=True)]
        optimizer.load_state_dict({"state": state, "param_groups": groups})

    version, internal, gauss = meta["rng_python"]
    rng = {
        "python": (version, tuple(internal), gauss),
        "numpy": {"keys": tensors["rng.numpy"].numpy().astype(np.uint32), **meta["rng_numpy"]},
        "torch": tensors["rng.torch"],
        "cuda": [tensors[f"rng.cuda.{i}"] for i in range(sum(k.startswith("rng.cuda.") for k in tensors))],
        "generators": {k[len("rng.gen.") :]: v for k, v in tensors.items() if k.startswith("rng.gen.")},
    }
    if restore_rng:
        restore_rng_states(rng, generators)
    return {"epoch": meta["epoch"], "step": meta["step"], "extra": meta["extra"], "rng_states": rng}
