"""``weaktr train-seg``, ``predict`` and ``convert`` through the CLI: exit codes, outputs, error lines."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CAM
from test_train_seg import demo, tiny_overrides  # noqa: F401  (the module-scoped demo fixture)

from weaktr.cli import main
from weaktr.data.images import load_label_map
from weaktr.data.info import DatasetInfo
from weaktr.io import save_label_png
from weaktr.models.cam import CAMConfig, build_cam_model, load_cam_model, map_official_key
from weaktr.models.segmenter import SegConfig, build_segmenter, load_segmenter


def _args(demo: DatasetInfo, run_dir: Path) -> list[str]:  # noqa: F811
    return [*tiny_overrides(demo.root / "dataset.yaml", run_dir), "seg_train.epochs=1"]


def test_train_seg_then_predict(
    demo: DatasetInfo,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    masks = str(demo.path(demo.masks))
    assert main(["train-seg", "--seeds", masks, "--gt", masks, *_args(demo, run)]) == 0
    assert (run / "seg" / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    assert "segmenter:" in capsys.readouterr().out
    assert main(["predict", "--split", "val", "--save-probs", *_args(demo, run)]) == 0
    out = capsys.readouterr().out
    assert str((run / "pred" / "val").resolve()) in out and "before CRF" in out
    ids = demo.ids("val")
    for folder in ("val", "val_nocrf"):
        assert sorted(p.stem for p in (run / "pred" / folder).glob("*.png")) == sorted(ids)
    assert len(list((run / "pred" / "val_probs").glob("*.npz"))) == len(ids)
    other = tmp_path / "elsewhere"
    args = ["predict", "--split", "val", "--no-crf", "--out", str(other), *_args(demo, run)]
    assert main(args) == 0
    assert len(list(other.glob("*.png"))) == len(ids)
    assert not (tmp_path / "elsewhere_nocrf").exists()


def test_bad_input_exits_2_naming_the_file(
    demo: DatasetInfo,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    assert main(["train-seg", *_args(demo, run)]) == 2  # default seeds: RUN_DIR/seeds_crf
    err = capsys.readouterr().err
    assert "seed folder not found" in err and str(run / "seeds_crf") in err

    seeds = tmp_path / "seeds"
    shutil.copytree(demo.path(demo.masks), seeds)
    bad = seeds / f"{demo.ids('train')[0]}.png"
    mask = load_label_map(bad).copy()
    mask[-1, -1] = 9
    save_label_png(bad, mask)
    assert main(["train-seg", "--seeds", str(seeds), *_args(demo, run)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "out of range" in err and "Traceback" not in err

    assert main(["train-seg", "--seeds", str(seeds), *_args(demo, run), "seg_train.epoch=3"]) == 2
    assert "did you mean 'seg_train.epochs'" in capsys.readouterr().err

    missing = tmp_path / "none.safetensors"
    assert main(["predict", "--checkpoint", str(missing), "--split", "val", *_args(demo, run)]) == 2
    assert str(missing) in capsys.readouterr().err

    assert main(["predict", "--out", str(tmp_path / "x"), *_args(demo, run)]) == 2
    assert "--out names one folder" in capsys.readouterr().err

    assert main(["convert", "segmenter", "--official", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err


def _official_segmenter(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our Segmenter keys are the authors' names; their encoder also carries an unused ImageNet head."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    d = sd["encoder.norm.weight"].shape[0]
    sd["encoder.head.weight"], sd["encoder.head.bias"] = torch.randn(1000, d), torch.zeros(1000)
    return sd


def test_convert_segmenter_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = SegConfig(n_cls=5, image_size=32, embed_dim=64, depth=2, num_heads=1, drop_path=0.0)
    model = build_segmenter(cfg).eval()
    torch.save({"model": _official_segmenter(model), "epoch": 7}, tmp_path / "checkpoint.pth")
    out = tmp_path / "seg.safetensors"
    args = ["convert", "segmenter", "--official", str(tmp_path / "checkpoint.pth"), "--out", str(out)]
    assert main(args) == 0
    loaded = load_segmenter(out)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, return_layer1=True), model(x, return_layer1=True))
    assert loaded.cfg.backbone == "deit_small_patch16_224"


def test_convert_cam_round_trip_with_pool_and_backbone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = CAMConfig(**{**TINY_CAM, "aaf_pool": "avg"})
    model = build_cam_model(cfg).eval()
    inverse = {
        k.replace("backbone.vit.", "").replace("aaf.", "adaptive_attention_fusion."): v.clone()
        for k, v in model.state_dict().items()
    }
    assert all(map_official_key(k) in model.state_dict() for k in inverse)
    torch.save({"model": inverse}, tmp_path / "weaktr.pth")
    out = tmp_path / "cam.safetensors"
    args = ["convert", "cam", "--official", str(tmp_path / "weaktr.pth"), "--out", str(out), "--pool", "avg"]
    assert main([*args, "--backbone", "vit_small_patch16_224"]) == 0
    loaded = load_cam_model(out)
    assert loaded.config.aaf_pool == "avg" and loaded.config.backbone == "vit_small_patch16_224"
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        a, b = loaded(x), model(x)
    torch.testing.assert_close(a.fine_cam, b.fine_cam)
    torch.testing.assert_close(a.cls_logits, b.cls_logits)


def test_convert_cam_randweight_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = build_cam_model(CAMConfig(**{**TINY_CAM, "fusion": "randweight"})).eval()
    inverse = {
        k.replace("backbone.vit.", "").replace("aaf.", "adaptive_attention_fusion."): v.clone()
        for k, v in model.state_dict().items()
    }
    np.save(tmp_path / "query.npy", inverse.pop("adaptive_attention_fusion.query").numpy())
    torch.save({"model": inverse}, tmp_path / "weaktr.pth")
    out = tmp_path / "cam.safetensors"
    args = ["convert", "cam", "--official", str(tmp_path / "weaktr.pth"), "--out", str(out)]
    assert main(args) == 2  # no head-wise FFN and no query: the error names the fix
    assert "--query" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--query", str(tmp_path / "query.npy")]) == 0
    loaded = load_cam_model(out)
    assert loaded.config.fusion == "randweight" and torch.equal(loaded.aaf.query, model.aaf.query)
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).fine_cam, model(x).fine_cam)
    seg = ["convert", "segmenter", "--official", str(tmp_path / "weaktr.pth"), "--out", str(out)]
    assert main([*seg, "--query", str(tmp_path / "query.npy")]) == 2
    assert "convert cam" in capsys.readouterr().err
