"""Parity of the Segmenter, its layer-1 output and the sliding-window ensemble (golden case ``segmenter``)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, assert_labels_agree, load_golden, load_golden_state

from weaktr.evaluation.inference import InferenceSettings, multiscale_probs, window_anchors
from weaktr.models.segmenter import Segmenter, build_segmenter, convert_official_segmenter_state

pytestmark = pytest.mark.golden


def _official_state() -> dict[str, torch.Tensor]:
    """Golden README §1: segmenter_state plus encoder.<k> = cam_model_state[<k>] for patch_embed/blocks."""
    seg = load_golden_state("segmenter_state.safetensors")
    cam = load_golden_state("cam_model_state.safetensors")
    sd = dict(seg)
    sd.update({f"encoder.{k}": v for k, v in cam.items() if k.startswith(("patch_embed.", "blocks."))})
    return sd


@pytest.fixture(scope="module")
def model_and_golden() -> tuple[Segmenter, dict, dict]:
    t, js = load_golden("segmenter")
    state, cfg = convert_official_segmenter_state(_official_state(), backbone=js["net_kwargs"]["backbone"])
    kw = js["net_kwargs"]
    assert cfg.n_cls == js["n_cls"]
    assert cfg.image_size == kw["image_size"][0]
    assert cfg.decoder_layers == kw["decoder"]["n_layers"]
    model = build_segmenter(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval(), t, js


def _sub(x: torch.Tensor, t: dict) -> torch.Tensor:
    return x[..., t["rows"], :][..., t["cols"]]


def test_forward_parity(model_and_golden: tuple[Segmenter, dict, dict]) -> None:
    model, t, js = model_and_golden
    x = t["input"]
    assert [list(model.mean), list(model.std)] == [js["normalization"]["mean"], js["normalization"]["std"]]
    seen: dict[str, object] = {}
    hooks = [
        model.encoder.norm.register_forward_hook(lambda m, i, o: seen.update(enc=o)),
        model.decoder.register_forward_hook(lambda m, i, o: seen.update(dec=o)),
    ]
    with torch.no_grad():
        out = model(x, return_layer1=True)
    for h in hooks:
        h.remove()
    assert_close(seen["enc"], t["encoder_out"], name="encoder_out")
    final, layer1 = seen["dec"]
    assert final.shape[-2:] == tuple(js["encoder_token_grid"])
    assert_close(final, t["decoder_masks_lowres"], name="decoder_masks_lowres")
    assert_close(final, t["multi.decoder_masks2_lowres"], name="multi.decoder_masks2_lowres")
    assert_close(layer1, t["multi.decoder_masks1_lowres"], name="multi.decoder_masks1_lowres")
    assert_close(_sub(out.logits, t), t["logits_sub"], name="logits_sub")
    assert_close(_sub(out.logits_layer1, t), t["multi.masks1_sub"], name="multi.masks1_sub")
    assert_labels_agree(out.logits[0].argmax(0), t["logits_argmax"], name="logits_argmax")


@pytest.mark.parametrize("variant", ["ss", "ss_flip"])
def test_sliding_window_ensemble_parity(model_and_golden: tuple[Segmenter, dict, dict], variant: str) -> None:
    model, t, js = model_and_golden
    x = t["input"][0]
    win, stride = js["window_size"], js["window_stride"]
    assert window_anchors(x.shape[-2], win, stride) == js["window_anchors_h"]
    assert window_anchors(x.shape[-1], win, stride) == js["window_anchors_w"]
    flags = js["variants"][variant]["flip_flags"]
    flip = flags == [False, True]
    assert flip or flags == [False]
    settings = InferenceSettings(
        scales=(1.0,),
        flip=flip,
        window=win,
        stride=stride,
        base_size=None,
        window_batch=js["window_batch_size"],
    )
    p2, p1 = multiscale_probs(model, x, settings, layer1=True)
    score = js["ensemble_weight"] * p1 + p2
    assert_close(_sub(score, t), t[f"{variant}.ensemble_sub"], name=f"{variant}.ensemble")
    for name, p in (("P1", p1), ("P2", p2)):
        if f"{variant}.{name}_sub" in t:
            assert_close(_sub(p, t), t[f"{variant}.{name}_sub"], name=f"{variant}.{name}")
    pred = score.argmax(0)
    assert_labels_agree(pred, t[f"{variant}.pred"], name=f"{variant}.pred")
    assert pred.unique().tolist() == t[f"{variant}.keys"].tolist() == js["variants"][variant]["keys"]
