"""Dense CRFs: parameters, refinement towards image edges, valid outputs, bad inputs, the process pool."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from weaktr.config import load_config
from weaktr.crf import CRFParams, label_crf, run_parallel, softmax_crf
from weaktr.errors import InputError


def _two_region_image(h: int = 40, w: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """A dark left and a bright right region with a little texture, and the true labels (0 / 1)."""
    rng = np.random.default_rng(0)
    truth = np.zeros((h, w), dtype=np.int64)
    truth[:, w // 2 :] = 1
    image = np.where(truth[..., None] == 1, 200, 40) + rng.integers(-10, 11, (h, w, 3))
    return image.astype(np.uint8), truth


def _square(x: int) -> int:
    return x * x


def test_presets_match_the_spec() -> None:
    assert CRFParams.voc_label() == CRFParams(4, 3, 83, 5, 3, 10, 0.7)
    assert CRFParams.coco_label() == CRFParams(3, 3, 50, 5, 10)
    assert CRFParams.voc_softmax() == CRFParams(3, 3, 83, 5, 3)
    assert CRFParams.coco_softmax() == CRFParams(1, 3, 67, 3, 4)
    assert CRFParams.preset("coco_label") == CRFParams.coco_label()
    with pytest.raises(InputError, match="unknown CRF preset"):
        CRFParams.preset("ade")


def test_preset_overrides_from_the_config() -> None:
    cfg = load_config(None, ["seeds.crf_params={bilateral_sxy: 20, bilateral_compat: 20}"])
    params = CRFParams.preset("voc_label", **cfg.seeds.crf_params.set_values())
    assert params == CRFParams(4, 3, 20, 5, 20, 10, 0.7)
    assert load_config().predict.crf_params.set_values() == {}
    with pytest.raises(InputError, match="bilateral_sigma"):
        load_config(None, ["predict.crf_params.bilateral_sigma=3"])
    with pytest.raises(InputError, match="unknown CRF parameters"):
        CRFParams.preset("voc_softmax", sxy=3)


def test_build_is_the_preset_of_its_kind_with_the_overrides() -> None:
    """The one builder of seeds (label), predict and the API (softmax): preset, kind, replaced fields."""
    assert CRFParams.build("label", "voc") == CRFParams.voc_label()
    assert CRFParams.build("softmax", "coco", {}) == CRFParams.coco_softmax()
    cfg = load_config(None, ["predict.crf_preset=coco", "predict.crf_params.iterations=2"])
    p = cfg.predict
    assert CRFParams.build("softmax", p.crf_preset, p.crf_params.set_values()) == CRFParams(1, 3, 67, 3, 4, 2)
    with pytest.raises(InputError, match="unknown CRF preset 'ade_label'"):
        CRFParams.build("label", "ade")


def test_label_crf_moves_a_noisy_seed_to_the_edge() -> None:
    image, truth = _two_region_image()
    rng = np.random.default_rng(1)
    seed = np.roll(truth, 5, axis=1)  # boundary off by 5 pixels
    seed[:, :5] = 0
    noise = rng.random(seed.shape) < 0.05
    seed[noise] = 1 - seed[noise]
    refined = label_crf(image, seed, 3, CRFParams.voc_label())  # label 2 is allowed but absent
    assert refined.shape == truth.shape
    assert set(np.unique(refined).tolist()) <= {0, 1}
    assert (refined == truth).mean() > (seed == truth).mean() + 0.05
    assert (refined == truth).mean() > 0.97


def test_softmax_crf_refines_and_returns_indices() -> None:
    image, truth = _two_region_image()
    rng = np.random.default_rng(2)
    p1 = np.clip(np.where(truth == 1, 0.6, 0.4) + rng.normal(0, 0.25, truth.shape), 0.01, 0.99)
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    refined = softmax_crf(image, probs, CRFParams.voc_softmax())
    assert refined.shape == truth.shape and set(np.unique(refined).tolist()) <= {0, 1}
    assert (refined == truth).mean() > (probs.argmax(0) == truth).mean() + 0.1
    assert not softmax_crf(image, probs[:1], CRFParams.voc_softmax()).any()


def test_single_label_and_bad_inputs() -> None:
    image, truth = _two_region_image()
    assert not label_crf(image, np.zeros_like(truth), 1, CRFParams.voc_label()).any()
    with pytest.raises(ValueError, match=r"0\.\.1"):
        label_crf(image, truth * 2, 2, CRFParams.voc_label())
    with pytest.raises(ValueError, match="image is"):
        label_crf(image[:10], truth, 2, CRFParams.voc_label())
    with pytest.raises(ValueError, match="uint8"):
        label_crf(image.astype(np.float32), truth, 2, CRFParams.voc_label())
    with pytest.raises(ValueError, match="K, H, W"):
        softmax_crf(image, truth.astype(np.float32), CRFParams.voc_softmax())


def test_missing_pydensecrf_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    image, truth = _two_region_image()
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(InputError, match=r"weaktr\[crf\]"):
        label_crf(image, truth, 2, CRFParams.voc_label())


def test_run_parallel_equals_serial_in_order() -> None:
    jobs = list(range(23))
    serial = run_parallel(_square, jobs, workers=0, progress=False)
    assert serial == [j * j for j in jobs]
    assert run_parallel(_square, jobs, workers=2, progress=False) == serial
    assert run_parallel(_square, [], workers=2, progress=False) == []


def test_read_only_image_is_accepted():
    """np.asarray of a PIL image is read-only; pydensecrf would refuse its buffer."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    image.flags.writeable = False
    labels = (np.arange(30)[None, :] >= 15).repeat(20, 0).astype(np.int64)
    out = label_crf(image, labels, 2, CRFParams.voc_label())
    assert out.shape == (20, 30)
