"""Checkpoints: equal weights and metadata give equal bytes, and they read back through load_checkpoint."""

from __future__ import annotations

import torch

from weaktr.io import load_checkpoint, save_checkpoint


def test_equal_checkpoints_are_equal_bytes(tmp_path):
    """safetensors writes metadata keys in hash-map order; save_checkpoint sorts them."""
    state = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.ones(5, dtype=torch.float16)}
    meta = {f"key{i}": str(i) for i in range(20)}
    paths = [tmp_path / f"{n}.safetensors" for n in range(3)]
    for path in paths:
        save_checkpoint(path, state, {"type": "t"}, meta)
    assert len({p.read_bytes() for p in paths}) == 1
    loaded, config = load_checkpoint(paths[0])
    assert config == {"type": "t"} and all(loaded[k].equal(v) for k, v in state.items())
