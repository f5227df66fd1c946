"""Shared fixtures: the golden vectors of the authors' implementation (read from WEAKTR_GOLDEN_DIR), the
tiny CAM network and segmenter configurations and small splits of a prepared data set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from weaktr.data.info import DatasetInfo, write_id_list

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COCO_MINI = Path(os.environ.get("WEAKTR_COCO_MINI", SHARED / "data" / "coco-mini"))


def golden_dir() -> Path:
    """The golden folder: $WEAKTR_GOLDEN_DIR, else ../shared/golden beside the repository."""
    return Path(os.environ.get("WEAKTR_GOLDEN_DIR", SHARED / "golden"))


def load_golden(case: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and JSON of one golden case; skips the test when the folder lacks it."""
    d = golden_dir()
    st, js = d / f"{case}.safetensors", d / f"{case}.json"
    if not st.is_file() or not js.is_file():
        pytest.skip(f"golden case {case!r} not found in {d}")
    return load_file(str(st)), json.loads(js.read_text())


def load_golden_state(name: str) -> dict[str, torch.Tensor]:
    """Decode a golden state file: int8 codes q listed in the metadata become float32(q) * 2**e."""
    path = golden_dir() / name
    if not path.is_file():
        pytest.skip(f"golden state {name!r} not found in {golden_dir()}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    exps = json.loads(meta.get("int8_pow2_exponents", "{}"))
    state = load_file(str(path))
    return {k: (v.to(torch.float32) * 2.0 ** exps[k]) if k in exps else v for k, v in state.items()}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4, name: str = "") -> None:
    """The parity contract: within tol absolute and relative."""
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}"
    )


def assert_labels_agree(actual, expected, min_fraction: float = 0.999, name: str = "") -> None:
    """Label maps may flip at near-ties: require at least min_fraction equal pixels."""
    a, e = torch.as_tensor(actual), torch.as_tensor(expected)
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    frac = (a.long() == e.long()).float().mean().item()
    assert frac >= min_fraction, f"{name}: only {frac:.5f} of pixels agree"


def golden_crf_params(crf: dict):
    """The CRF settings a golden case's JSON records, as ``CRFParams``."""
    from weaktr.crf import CRFParams

    g, b = crf["gaussian"], crf["bilateral"]
    return CRFParams(
        g["sxy"], g["compat"], b["sxy"], b["srgb"], b["compat"], crf["iterations"], crf["gt_prob"]
    )


@pytest.fixture
def coco_mini() -> Path:
    """The real VOC-layout mini data set in ../shared; skips when absent."""
    if not COCO_MINI.is_dir():
        pytest.skip(f"coco-mini not found at {COCO_MINI}")
    return COCO_MINI


# The two tiny networks of the tests (timm's habit: one small shared config each), as keyword
# arguments of CAMConfig / SegConfig. A test changes only what it is about, {**TINY_CAM, "depth": 1},
# and a run config gets them through model_override.
#
# The CAM network: 2×2 patches of 16 px, two blocks of width 64 with 4 heads (8 attention maps for
# the AAF, whose interactive FFN gets 8 / 2 = 4 hidden units).
TINY_CAM = dict(
    num_classes=3,
    img_size=32,
    patch_size=16,
    embed_dim=64,
    depth=2,
    num_heads=4,
    drop_path=0.0,
    aaf_reduction=2.0,
    aaf_feat_reduction=4,
)
# The segmenter: the demo's conv stem of 8 px on 32 px crops (4×4 tokens), one block of width 32
# with 2 heads, 3 foreground classes.
TINY_SEG = dict(
    backbone="vit_small_patch16_224",
    n_cls=4,
    image_size=32,
    stem="conv",
    patch_size=8,
    embed_dim=32,
    depth=1,
    num_heads=2,
)


def model_override(section: str, model: dict) -> str:
    """A model config as one run-config override, ``cam_model={num_classes: 3, ...}``.

    A ``key={...}`` override states the whole section (see ``weaktr.config.loading``); later dotted
    overrides (``cam_model.num_classes=2``) change single keys of it.
    """
    return f"{section}={{{', '.join(f'{k}: {v}' for k, v in model.items())}}}"


def add_splits(info: DatasetInfo, out: Path, **splits: list[str]) -> Path:
    """Write id lists for extra splits into ``out`` and save the data set there; returns its yaml."""
    for name, ids in splits.items():
        write_id_list(out / f"{name}.txt", ids)
        info.splits[name] = str(out / f"{name}.txt")
    info.save(out / "dataset.yaml")
    return out / "dataset.yaml"
