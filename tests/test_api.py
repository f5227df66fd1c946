"""The Python API on tiny saved models: masks, CAMs and class scores agree with the stage functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CAM, TINY_SEG
from PIL import Image

from weaktr.api import CAMResult, Prediction, WeakTr
from weaktr.cam.generate import multiscale_cam
from weaktr.config import load_config, save_config
from weaktr.data.demo import generate_demo
from weaktr.data.images import load_label_map
from weaktr.errors import InputError
from weaktr.evaluation.inference import InferenceSettings, predict_probs
from weaktr.models import cpu_blocks
from weaktr.models.cam import CAMConfig, build_cam_model, save_cam_model
from weaktr.models.segmenter import SegConfig, build_segmenter, save_segmenter
from weaktr.models.timm_factory import normalisation

N_FG = 3


def _save_models(folder: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    seg = build_segmenter(SegConfig(**{**TINY_SEG, "n_cls": N_FG + 1}))
    cam = build_cam_model(CAMConfig(**{**TINY_CAM, "num_classes": N_FG}))
    seg_path, cam_path = folder / "seg" / "model.safetensors", folder / "cam" / "model.safetensors"
    save_segmenter(seg_path, seg)
    save_cam_model(cam_path, cam)
    return seg_path, cam_path


@pytest.fixture
def checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    return _save_models(tmp_path / "models")


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def test_predict_matches_the_inference_code(checkpoints, image, tmp_path) -> None:
    model = WeakTr.load(*checkpoints, device="cpu")
    pred = model.predict(image)
    assert isinstance(pred, Prediction)
    assert pred.mask.dtype == np.uint8 and pred.mask.shape == (40, 56)
    assert pred.probs.shape == (N_FG + 1, 40, 56) and pred.probs.dtype == np.float32
    np.testing.assert_allclose(pred.probs.sum(0), 1.0, atol=1e-5)
    one = InferenceSettings(scales=(1.0,), flip=False, window=32, stride=21, base_size=32)
    ref = predict_probs(model.segmenter, image, one)
    np.testing.assert_array_equal(pred.mask, ref.argmax(0).numpy())
    assert pred.class_ids == sorted(set(np.unique(pred.mask).tolist()) - {0})
    Image.fromarray(image).save(tmp_path / "x.png")
    np.testing.assert_array_equal(model.predict(tmp_path / "x.png").mask, pred.mask)
    np.testing.assert_array_equal(model.predict(Image.open(tmp_path / "x.png")).mask, pred.mask)
    multi = model.predict(image, scales=(0.75, 1.0), flip=True, crf=True)
    assert multi.mask.shape == (40, 56) and multi.mask.max() <= N_FG


def test_cams_and_class_scores(checkpoints, image) -> None:
    model = WeakTr.load(*checkpoints, device="cpu")
    scores = model.class_scores(image)
    assert list(scores) == [1, 2, 3] and all(0.0 < s < 1.0 for s in scores.values())
    res = model.cams(image, label_ids=[3, 1], scales=(1.0, 1.2))
    assert isinstance(res, CAMResult) and res.classes == [1, 3]
    assert res.cams.shape == (2, 40, 56) and res.cams.dtype == np.float32
    assert res.cams.min() >= 0.0 and res.cams.max() <= 1.0 + 1e-6
    mean, std = normalisation(model.cam_model.config.backbone)
    ref, _ = multiscale_cam(model.cam_model, image, [1, 3], (1.0, 1.2), mean, std, torch.device("cpu"))
    np.testing.assert_allclose(res.cams, ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(res.scores, [scores[1], scores[3]], rtol=1e-6)
    auto = model.cams(image)  # classes predicted from the scores (the best one if none passes 0.5)
    passing = [c for c, s in scores.items() if s >= 0.5] or [max(scores, key=scores.get)]
    assert auto.classes == passing
    assert model.cams(image, threshold=1.1).classes == [max(scores, key=scores.get)]


def test_predict_folder_writes_palette_pngs(checkpoints, image, tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(image).save(folder / "a.png")
    Image.fromarray(image[:, ::-1]).save(folder / "b.JPG", quality=95)
    (folder / "notes.txt").write_text("not an image")
    model = WeakTr.load(checkpoints[0], device="cpu")
    written = model.predict_folder(folder, tmp_path / "masks")
    assert [p.name for p in written] == ["a.png", "b.png"]
    with Image.open(written[0]) as png:
        assert png.mode == "P"
    np.testing.assert_array_equal(load_label_map(written[0]), model.predict(folder / "a.png").mask)


def test_predict_folder_packs_the_fused_blocks_once(checkpoints, image, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(image).save(folder / f"{name}.png")
    packed: list[object] = []
    reorder = torch.ops.mkldnn._reorder_linear_weight

    def counting(weight: torch.Tensor, *args: object) -> torch.Tensor:
        packed.append(weight)
        return reorder(weight, *args)

    if cpu_blocks.fused_problem(torch.float32) is not None:
        pytest.skip(f"no fused fp32 forward here: {cpu_blocks.fused_problem(torch.float32)}")
    model = WeakTr.load(checkpoints[0], device="cpu")  # the policy is resolved here, once
    blocks = [*model.segmenter.encoder.blocks, *model.segmenter.decoder.blocks]
    assert all(isinstance(b, cpu_blocks.FusedBlock) for b in blocks)
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", counting)
    model.predict_folder(folder, tmp_path / "masks", scales=(0.75, 1.0))
    assert len(packed) == 4 * len(blocks)  # four weights per block, once for the folder


def test_from_run_takes_class_names_and_predict_settings(tmp_path, image) -> None:
    run = tmp_path / "run"
    _save_models(run)
    overrides = [f"run_dir={run}", "predict.window=24", "predict.stride=12", "predict.base_size=36"]
    save_config(load_config("demo", overrides), run / "config.yaml")
    generate_demo(run / "data", 2, 1, 32, N_FG, 0)
    model = WeakTr.from_run(run, device="cpu")
    assert model.class_names == ["background", "disc", "square", "triangle"]
    assert model.settings == InferenceSettings.from_config(load_config(run / "config.yaml").predict)
    assert (model.settings.window, model.settings.stride, model.settings.base_size) == (24, 12, 36)
    assert model.predict(image).mask.shape == (40, 56)


def test_bad_input_gives_clear_errors(checkpoints, image, tmp_path) -> None:
    seg_path, cam_path = checkpoints
    with pytest.raises(InputError, match=r"nope\.safetensors: checkpoint not found"):
        WeakTr.load(tmp_path / "nope.safetensors", device="cpu")
    with pytest.raises(InputError, match="not a segmenter checkpoint"):
        WeakTr.load(seg_checkpoint=cam_path, device="cpu")
    with pytest.raises(InputError, match="needs a segmenter checkpoint, a CAM checkpoint or both"):
        WeakTr.load(device="cpu")
    with pytest.raises(InputError, match="2 class names given for 4 label ids"):
        WeakTr.load(seg_path, device="cpu", class_names=["background", "cat"])
    seg_only, cam_only = (
        WeakTr.load(seg_path, device="cpu"),
        WeakTr.load(cam_checkpoint=cam_path, device="cpu"),
    )
    with pytest.raises(InputError, match="no CAM network loaded"):
        seg_only.cams(image)
    with pytest.raises(InputError, match="no segmenter loaded"):
        cam_only.predict(image)
    with pytest.raises(InputError, match=r"missing\.jpg: file not found"):
        seg_only.predict(tmp_path / "missing.jpg")
    with pytest.raises(InputError, match="uint8 H×W×3"):
        seg_only.predict(image.astype(np.float32))
    with pytest.raises(InputError, match=r"outside 1\.\.3"):
        cam_only.cams(image, label_ids=[4])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        seg_only.predict_folder(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(InputError, match="no trained model"):
        WeakTr.from_run(tmp_path / "empty")
    other = build_cam_model(CAMConfig(**{**TINY_CAM, "num_classes": 5}))
    save_cam_model(tmp_path / "cam5.safetensors", other)
    with pytest.raises(InputError, match="different data sets"):
        WeakTr.load(seg_path, tmp_path / "cam5.safetensors", device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_agrees_with_cpu(checkpoints, image) -> None:
    cpu, gpu = WeakTr.load(*checkpoints, device="cpu"), WeakTr.load(*checkpoints, device="cuda")
    np.testing.assert_allclose(gpu.predict(image).probs, cpu.predict(image).probs, atol=1e-3)
    np.testing.assert_allclose(gpu.cams(image, [1]).cams, cpu.cams(image, [1]).cams, atol=1e-3)
