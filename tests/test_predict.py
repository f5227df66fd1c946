"""Split prediction: PNGs with valid ids, the no-CRF folder, probability files, resume, CRF on/off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SEG
from PIL import Image
from test_train_seg import demo, tiny_ctx  # noqa: F401  (the module-scoped demo fixture)

import weaktr.evaluation.inference as inf
import weaktr.stages.predict as pr
from weaktr.crf import CRFParams
from weaktr.data.images import load_image
from weaktr.data.info import DatasetInfo
from weaktr.errors import InputError
from weaktr.models import cpu_blocks
from weaktr.models.execution import ExecutionPolicy
from weaktr.models.segmenter import SegConfig, build_segmenter, save_segmenter
from weaktr.runtime.layout import nocrf_dir, probs_dir


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny segmenter (it predicts one class everywhere: see ``colour_scores``)."""
    torch.manual_seed(1)
    model = build_segmenter(SegConfig(**TINY_SEG))
    path = tmp_path_factory.mktemp("model") / "seg.safetensors"
    save_segmenter(path, model)
    return path


@pytest.fixture
def colour_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores from the pixel colours (weight 1.8, as the ensemble's), so every image has several classes."""

    def fake(model, image, *args, **kwargs) -> torch.Tensor:
        x = torch.as_tensor(image).permute(2, 0, 1).float() / 32.0
        logits = torch.cat([x, torch.full_like(x[:1], 4.0)])
        return 1.8 * logits.softmax(0)

    monkeypatch.setattr(pr, "predict_probs", fake)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "P"
        return np.asarray(img)


def test_predict_with_crf_writes_pngs_nocrf_and_probs(
    demo: DatasetInfo,  # noqa: F811
    model_path: Path,
    tmp_path: Path,
    colour_scores: None,
) -> None:
    ctx = tiny_ctx(demo, tmp_path / "run", "predict.scales=[0.75, 1.0]")
    out = pr.predict_split(ctx, model_path, "val", tmp_path / "pred" / "val", crf=True, save_probs=True)
    assert out == tmp_path / "pred" / "val"
    assert (nocrf_dir(out), probs_dir(out)) == (out.parent / "val_nocrf", out.parent / "val_probs")
    n_multi = n_changed = 0
    for i in demo.ids("val"):
        h, w = load_image(demo.image_path(i)).shape[:2]
        final, nocrf = _png(out / f"{i}.png"), _png(tmp_path / "pred" / "val_nocrf" / f"{i}.png")
        assert final.shape == nocrf.shape == (h, w)
        assert final.max() < 4 and nocrf.max() < 4
        with np.load(tmp_path / "pred" / "val_probs" / f"{i}.npz") as f:
            probs, classes = f["probs"], f["classes"]
        assert probs.dtype == np.float16 and probs.shape == (len(classes), h, w)
        assert classes.tolist() == np.unique(nocrf).tolist()
        assert set(np.unique(final)) <= set(classes.tolist())  # the CRF only chooses among the keys
        assert np.array_equal(classes[probs.astype(np.float32).argmax(0)], nocrf)
        assert probs.min() >= 0.0 and probs.astype(np.float32).sum(0).max() <= 1.0 + 1e-2
        n_multi += len(classes) > 1
        n_changed += (final != nocrf).any()
    assert n_multi == len(demo.ids("val")) and n_changed > 0


def test_resume_skips_done_images_and_crf_off(
    demo: DatasetInfo,  # noqa: F811
    model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = tiny_ctx(demo, tmp_path / "run")
    ids = demo.ids("val")
    out = tmp_path / "pred"
    pr.predict_split(ctx, model_path, "val", out, crf=False)
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(ids)
    assert not (tmp_path / "pred_nocrf").exists() and not (tmp_path / "pred_probs").exists()
    first = {i: _png(out / f"{i}.png") for i in ids}

    (out / f"{ids[1]}.png").unlink()
    calls: list[int] = []
    original = pr.predict_probs
    monkeypatch.setattr(pr, "predict_probs", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    pr.predict_split(ctx, model_path, "val", out, crf=False)
    assert len(calls) == 1  # only the missing image was redone
    for i in ids:
        assert np.array_equal(_png(out / f"{i}.png"), first[i])

    pr.predict_split(ctx, model_path, "val", out, crf=False, save_probs=True)
    assert len(calls) == 1 + len(ids)  # asking for probabilities redoes images that lack them
    assert sorted(p.stem for p in (tmp_path / "pred_probs").glob("*.npz")) == sorted(ids)


def test_crf_pool_equals_in_process(
    demo: DatasetInfo,  # noqa: F811
    model_path: Path,
    tmp_path: Path,
    colour_scores: None,
) -> None:
    one = pr.predict_split(
        tiny_ctx(demo, tmp_path / "a"), model_path, "val", tmp_path / "a" / "val", crf=True
    )
    ctx2 = tiny_ctx(demo, tmp_path / "b", "predict.workers=2")
    two = pr.predict_split(ctx2, model_path, "val", tmp_path / "b" / "val", crf=True)
    for i in demo.ids("val"):
        assert np.array_equal(_png(one / f"{i}.png"), _png(two / f"{i}.png"))


def test_crf_job_maps_back_through_keys(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    scores = rng.random((2, 20, 30)).astype(np.float32)
    scores[0, :, :15] += 1.0
    scores[1, :, 15:] += 1.0
    keys = np.array([0, 3])
    pr._crf_job((image, scores, keys, CRFParams.voc_softmax(), tmp_path / "x.png", None))
    with Image.open(tmp_path / "x.png") as img:
        labels = np.asarray(img)
    assert set(np.unique(labels)) == {0, 3}
    assert (labels[:, :10] == 0).all() and (labels[:, 20:] == 3).all()


def test_class_count_mismatch_is_an_input_error(
    demo: DatasetInfo,  # noqa: F811
    tmp_path: Path,
) -> None:
    path = tmp_path / "seg5.safetensors"
    save_segmenter(path, build_segmenter(SegConfig(**{**TINY_SEG, "n_cls": 5})))
    with pytest.raises(InputError, match="predicts 5 classes") as err:
        pr.predict_split(tiny_ctx(demo, tmp_path / "run"), path, "val", tmp_path / "out", crf=False)
    assert err.value.path == path


def test_cpu_bf16_runs_only_the_encoder_blocks_in_bf16_and_restores_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    model = build_segmenter(SegConfig(**{**TINY_SEG, "n_cls": 5})).eval()
    x = torch.randn(2, 3, 40, 56)
    fp32 = inf.InferenceSettings(window=32, stride=16, window_batch=16)
    keys = list(model.state_dict())
    with torch.no_grad():
        (ref,) = inf.sliding_window_logits(model, x, fp32)
    calls: list[torch.dtype] = []
    original = cpu_blocks.Bf16Block._low

    def spy(block: cpu_blocks.Bf16Block) -> torch.nn.Module:
        low = original(block)
        calls.append(next(low.parameters()).dtype)
        return low

    monkeypatch.setattr(cpu_blocks.Bf16Block, "_low", spy)
    model.prepare_inference(ExecutionPolicy.seg_inference(torch.device("cpu"), bf16=True))
    with torch.no_grad():
        (low,) = inf.sliding_window_logits(model, x, fp32)
    assert calls == [torch.bfloat16] * len(model.encoder.blocks)  # one batch of windows; decoder fp32
    assert low.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the bf16 weights are copies
    assert list(model.state_dict()) == keys  # the stand-ins keep the blocks' state keys
    torch.testing.assert_close(low, ref, atol=0.1, rtol=0.05)


def test_cpu_bf16_copy_is_made_once_per_loop_and_runs_in_eval_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model prepared once pays for one bf16 copy of its weights, and the copy does not inherit the
    training mode (drop path) of a model evaluated mid-training."""
    torch.manual_seed(0)
    model = build_segmenter(SegConfig(**{**TINY_SEG, "n_cls": 5, "depth": 2, "drop_path": 0.9}))
    x = torch.randn(3, 40, 56)
    model.eval()
    settings = inf.InferenceSettings(window=32, stride=16, base_size=None)
    model.prepare_inference(ExecutionPolicy.seg_inference(torch.device("cpu"), bf16=True))
    ref = inf.predict_logits(model, x, settings)
    copies: list[object] = []
    deepcopy = cpu_blocks.copy.deepcopy
    monkeypatch.setattr(cpu_blocks.copy, "deepcopy", lambda obj: copies.append(obj) or deepcopy(obj))
    model.train()
    with torch.no_grad():  # the weights change, as an optimiser step changes them
        for p in model.encoder.parameters():
            p.add_(0.0)
    outs = [inf.predict_logits(model, x, settings) for _ in range(3)]
    assert len(copies) == len(model.encoder.blocks)  # one copy per block for the whole loop
    assert model.training
    for out in outs:
        torch.testing.assert_close(out, ref)


def test_predict_crf_params_override_the_preset(
    demo: DatasetInfo,  # noqa: F811
    model_path: Path,
    tmp_path: Path,
    colour_scores: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[CRFParams] = []
    real = pr.softmax_crf

    def spy(img: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
        seen.append(params)
        return real(img, probs, params)

    monkeypatch.setattr(pr, "softmax_crf", spy)
    ctx = tiny_ctx(demo, tmp_path / "run", "predict.crf_params={bilateral_sxy: 7, iterations: 2}")
    pr.predict_split(ctx, model_path, "val", tmp_path / "pred" / "val", crf=True)
    # voc_softmax with two fields replaced
    assert seen and set(seen) == {CRFParams(3, 3, 7, 5, 3, iterations=2)}
