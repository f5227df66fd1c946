"""Parity of the CAM network with the authors' code on the golden ``cam_model`` cases (float32)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, load_golden, load_golden_state

from weaktr.models.cam import CAMNet, cam_loss, convert_official_cam_state, map_official_key

CASES = {
    "cam_model": ["cam_model_state.safetensors"],
    # the c90 state holds only its class-dependent keys; the rest is the 20-class state (README §1)
    "cam_model_c90": ["cam_model_state.safetensors", "cam_model_c90_state.safetensors"],
}
TOL = 1e-4


def _check(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    """1e-4 absolute and relative, and again after scaling by max|expected|: many of these tensors
    (fine CAM, AAF gradients) are far below the absolute tolerance, which alone would pass anything."""
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{name}: {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    assert_close(actual, expected, TOL, name)
    scale = expected.abs().max().clamp_min(1e-30)
    assert_close(actual / scale, expected / scale, TOL, name + " (scaled)")


@pytest.mark.golden
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_cam_model(case: str) -> None:
    golden, meta = load_golden(case)
    state: dict[str, torch.Tensor] = {}
    for file in CASES[case]:
        state.update(load_golden_state(file))
    kwargs = meta["model_kwargs"]
    ours, cfg = convert_official_cam_state(state, aaf_pool=kwargs["pool"], drop_path=kwargs["drop_path_rate"])
    assert cfg.num_classes == kwargs["num_classes"]
    assert cfg.aaf_feat_reduction == kwargs["feat_reduction"]
    assert int(meta["aaf"]["channel"] / cfg.aaf_reduction) == meta["aaf"]["hidden"]

    torch.manual_seed(0)
    model = CAMNet(cfg)
    model.load_state_dict(ours)
    model.train()
    x, labels = golden["input"], golden["labels"]
    feats = model.backbone(x)
    out = model.predict(feats)
    losses = cam_loss(out, labels)

    C = cfg.num_classes
    B, _, D = feats.tokens.shape
    h, w = feats.grid
    aaf = model.aaf
    pooled = aaf.pooled_features(feats.attn_out, feats.head_out)
    fused = aaf(feats.attn, feats.attn_out, feats.head_out).fused
    actual = {
        "train.cls_logits": out.cls_logits,
        "train.coarse_logits": out.coarse_logits,
        "train.fine_logits": out.fine_logits,
        "train.coarse_cam_prerelu": out.coarse_cam,
        "train.fine_cam": out.fine_cam,
        "train.cls_tokens_out": feats.tokens[:, :C],
        "train.patch_tokens": feats.tokens[:, C:].reshape(B, h, w, D).permute(0, 3, 1, 2),
        "train.aaf_pooled": pooled,
        "train.aaf_head_scores": aaf.head_scores(pooled),
        "train.aaf_weights": out.aaf_weights,
        "train.fused_attn": fused,
        **{f"loss.{k}": v.reshape(1) for k, v in losses.items()},
    }

    params = dict(model.named_parameters())
    fine_only = meta.get("params_receiving_grad_from_fine_loss_only")
    if fine_only is not None:
        names = list(params)
        grads = torch.autograd.grad(
            losses["fine"], list(params.values()), retain_graph=True, allow_unused=True
        )
        reached = sorted(n for n, g in zip(names, grads, strict=True) if g is not None)
        assert reached == sorted(map_official_key(k) for k in fine_only)
    losses["total"].backward()
    for key in golden:
        if key.startswith("grad."):
            actual[key] = params[map_official_key(key[len("grad.") :])].grad

    model.eval()
    with torch.no_grad():
        gen = model(x)
    actual["camgen.cls_logits"] = gen.cls_logits
    actual["camgen.cams_fused"] = gen.fused_cam
    assert (
        golden["camgen.patch_attn"].shape[0] == 1
    )  # the authors' leading singleton, summed by their generator
    actual["camgen.patch_attn"] = gen.patch_attn.unsqueeze(0)

    outputs = sorted(k for k in golden if k.split(".")[0] in {"train", "loss", "grad", "camgen"})
    assert sorted(actual) == outputs, "every stored output must be compared"
    for key in outputs:
        _check(f"{case}:{key}", actual[key].detach(), golden[key])
