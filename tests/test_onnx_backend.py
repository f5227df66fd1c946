"""ONNX export of the segmenter and the onnxruntime backend: same masks as PyTorch through the same code.

One tiny random segmenter (weights spread so that images get several classes) is exported once, by
the command line, into a demo run directory shared by every test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COCO_MINI

from weaktr.api import WeakTr
from weaktr.cli import main
from weaktr.config import load_config, save_config
from weaktr.data.demo import render_scene
from weaktr.data.images import load_image, load_label_map
from weaktr.errors import InputError
from weaktr.evaluation.inference import InferenceSettings, predict_probs
from weaktr.evaluation.onnx_backend import OrtSegmenter, file_sha256
from weaktr.models.segmenter import SegConfig, build_segmenter, load_segmenter, save_segmenter
from weaktr.runtime.layout import RunLayout

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")

AGREEMENT = 0.999


def _segmenter(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_segmenter(
        SegConfig(n_cls=4, image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    )
    with torch.no_grad():  # random init predicts one class nearly everywhere; spread weights do not
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    save_segmenter(RunLayout(run).seg_model, _segmenter())
    overrides = [
        f"run_dir={run}",
        "device=cpu",
        "data.demo.n_train=2",
        "data.demo.n_val=3",
        "data.demo.size=64",
        "data.demo.num_classes=3",
        "predict.scales=[0.75, 1.0]",
        "predict.window=32",
        "predict.stride=21",
        "predict.base_size=48",
        "predict.crf=false",
        "predict.splits=[val]",
    ]
    save_config(load_config("demo", overrides), RunLayout(run).config)
    assert main(["export-model", str(run), "--format", "onnx"]) == 0
    return run


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).float().mean().item()


def test_export_has_dynamic_batch_height_width_and_both_outputs(run: Path) -> None:
    lay = RunLayout(run)
    proto = onnx.load(str(lay.seg_onnx))
    (images,) = proto.graph.input
    dims = images.type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    assert [o.name for o in proto.graph.output] == ["masks", "masks_layer1"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["source_sha256"] == file_sha256(lay.seg_model)
    net, model = OrtSegmenter(lay.seg_onnx), load_segmenter(lay.seg_model)
    assert (net.n_cls, net.patch_size, net.mean, net.std) == (4, 8, model.mean, model.std)
    x = torch.randn(3, 3, 45, 61)  # off the patch grid, another batch size
    with torch.no_grad():
        want = model.forward_masks(x, return_layer1=True)
    got = net.forward_masks(x, return_layer1=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert len(net.forward_masks(x)) == 1


def _compare(run: Path, images: list[np.ndarray], settings: InferenceSettings) -> None:
    lay = RunLayout(run)
    net, model = OrtSegmenter(lay.seg_onnx), load_segmenter(lay.seg_model)
    agree, classes = [], set()
    for image in images:
        want = predict_probs(model, image, settings)
        got = predict_probs(net, image, settings)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        agree.append(_agreement(got.argmax(0), want.argmax(0)))
        classes |= set(want.argmax(0).unique().tolist())
    assert len(classes) >= 3  # the masks have something to agree on
    assert min(agree) >= AGREEMENT


def test_masks_agree_with_pytorch_on_demo_images(run: Path) -> None:
    images = [render_scene(0, i, 64, 3)[0] for i in range(3)]
    settings = InferenceSettings(scales=(0.75, 1.25), window=32, stride=21, base_size=48, window_batch=4)
    _compare(run, images, settings)


@pytest.mark.skipif(not COCO_MINI.is_dir(), reason=f"coco-mini not found at {COCO_MINI}")
def test_masks_agree_with_pytorch_on_coco_mini_photos(run: Path) -> None:
    ids = (COCO_MINI / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:2]
    images = [load_image(COCO_MINI / "JPEGImages" / f"{i}.jpg") for i in ids]
    _compare(run, images, InferenceSettings(scales=(1.0,), window=32, stride=21, base_size=64))


def test_api_and_predict_command_run_the_export(run: Path, tmp_path: Path) -> None:
    image = render_scene(0, 7, 64, 3)[0]
    ort_api = WeakTr.from_run(run, device="cpu", backend="onnxruntime")
    torch_api = WeakTr.from_run(run, device="cpu")
    assert isinstance(ort_api.segmenter, OrtSegmenter) and ort_api.settings == torch_api.settings
    got, want = (m.predict(image, scales=(1.0, 1.25), flip=True).mask for m in (ort_api, torch_api))
    assert _agreement(torch.from_numpy(got), torch.from_numpy(want)) >= AGREEMENT
    config = str(RunLayout(run).config)
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        args = ["predict", "--config", config, "--backend", backend, "--no-crf", "--out", str(out)]
        assert main(args) == 0
    pngs = sorted(p.name for p in (tmp_path / "torch").glob("*.png"))
    assert len(pngs) == 3 and pngs == sorted(p.name for p in (tmp_path / "onnxruntime").glob("*.png"))
    for name in pngs:
        a, b = (torch.from_numpy(load_label_map(tmp_path / d / name)) for d in ("torch", "onnxruntime"))
        assert _agreement(a, b) >= AGREEMENT


def test_missing_stale_or_unusable_exports_are_input_errors(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lay = RunLayout(run)
    bare = tmp_path / "bare"
    save_segmenter(RunLayout(bare).seg_model, _segmenter())
    with pytest.raises(InputError, match="no ONNX export of the segmenter: run 'weaktr export-model"):
        WeakTr.from_run(bare, device="cpu", backend="onnxruntime")
    with pytest.raises(InputError, match="unknown inference backend 'tensorrt'"):
        WeakTr.from_run(run, device="cpu", backend="tensorrt")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        (tmp_path / "junk.onnx").write_bytes(b"not onnx")
        OrtSegmenter(tmp_path / "junk.onnx")

    original = lay.seg_model.read_bytes()  # retrained after the export: the export is stale
    try:
        save_segmenter(lay.seg_model, _segmenter(seed=1))
        with pytest.raises(InputError, match="older than its checkpoint"):
            OrtSegmenter(lay.seg_onnx)
    finally:
        lay.seg_model.write_bytes(original)
    OrtSegmenter(lay.seg_onnx)

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the extra were not installed
    assert main(["export-model", str(run), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "needs onnxscript" in err and "weaktr[onnx]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()
