"""The golden ``cam_inference`` case end to end: the authors' weights → multi-scale CAMs → seeds (+CRF).

Unlike test_golden_cam_inference.py (which fuses the stored model outputs), this runs our network on
the stored image, so preprocessing, batching, the model and the fusion are checked together.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_labels_agree, golden_crf_params, golden_dir, load_golden, load_golden_state

from weaktr.cam.generate import multiscale_cam
from weaktr.cam.seeds import seed_from_cams
from weaktr.models.cam import CAMNet, convert_official_cam_state

pytestmark = pytest.mark.golden


@pytest.fixture(scope="module")
def pipeline() -> tuple[dict[str, torch.Tensor], dict, torch.Tensor, np.ndarray]:
    """(golden tensors, golden JSON, our CAMs, the classes) of the stored image."""
    tensors, meta = load_golden("cam_inference")
    model_json = golden_dir() / "cam_model.json"
    if not model_json.is_file():
        pytest.skip(f"golden case 'cam_model' not found in {golden_dir()}")
    kwargs = json.loads(model_json.read_text())["model_kwargs"]
    state, cfg = convert_official_cam_state(
        load_golden_state("cam_model_state.safetensors"),
        aaf_pool=kwargs["pool"],
        drop_path=kwargs["drop_path_rate"],
        refine=meta["patch_attn_refine"],
    )
    assert cfg.num_classes == tensors["labels"].numel()
    torch.manual_seed(0)
    model = CAMNet(cfg)
    model.load_state_dict(state)
    model.eval()
    image = tensors["image"].permute(1, 2, 0).contiguous().numpy()
    label_ids = (tensors["present_classes"] + 1).tolist()
    norm = meta["normalize"]
    cams, classes = multiscale_cam(
        model,
        image,
        label_ids,
        meta["scales"],
        norm["mean"],
        norm["std"],
        torch.device("cpu"),
        flip=meta["flip"],
    )
    return tensors, meta, cams, classes.numpy()


def test_cam_maps_match(pipeline) -> None:
    tensors, meta, cams, classes = pipeline
    assert classes.tolist() == [c + 1 for c in meta["present_classes_fg_index"]]
    assert tuple(cams.shape) == tuple(tensors["cam_maps"].shape)
    torch.testing.assert_close(cams, tensors["cam_maps"], atol=1e-3, rtol=0)


def test_seed_and_crf_seed_match(pipeline) -> None:
    tensors, meta, cams, classes = pipeline
    seed = seed_from_cams(cams.numpy(), classes, meta["threshold"])
    assert_labels_agree(seed, tensors["seed_label_t043"], name="seed")
    params = golden_crf_params(meta["crf"])
    image = tensors["image"].permute(1, 2, 0).contiguous().numpy()
    seed_crf = seed_from_cams(cams.numpy(), classes, meta["threshold"], image, params)
    assert_labels_agree(seed_crf, tensors["seed_label_t043_crf"], name="seed_crf")
