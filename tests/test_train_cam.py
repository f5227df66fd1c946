"""Phase-1 training on a tiny generated data set: log, checkpoint, exact resume, selection, CAM kinds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CAM, model_override

from weaktr.cam.generate import fuse_cams, label_vector, multiscale_cam, preprocess_scales
from weaktr.config import RunConfig, load_config
from weaktr.data.demo import generate_demo
from weaktr.engine.optim import build_adamw, set_lr
from weaktr.errors import InputError
from weaktr.io import load_checkpoint
from weaktr.models.cam import CAMConfig, build_cam_model, cam_loss, load_cam_model, param_groups
from weaktr.models.execution import ExecutionPolicy
from weaktr.runtime.context import open_run
from weaktr.stages.train_cam import train_cam

# The shared tiny CAM network at the demo's 48 px, 8 px patches, with one block of width 32
TRAIN_CAM = {
    **TINY_CAM,
    "backbone": "vit_small_patch16_224",
    "img_size": 48,
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 2,
    "drop_path": 0.1,
}
TINY_MODEL = model_override("cam_model", TRAIN_CAM)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train + 4 val generated images of 48 px with 3 classes (shared by the tests of this module)."""
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, n_train=16, n_val=4, size=48, num_classes=3, seed=0)
    return root / "dataset.yaml"


def tiny_overrides(data: Path, run_dir: Path) -> list[str]:
    """The demo config shrunk to seconds: 4 iterations per epoch of a one-block model on the CPU."""
    return [
        f"data.dataset={data}",
        f"run_dir={run_dir}",
        "device=cpu",
        TINY_MODEL,
        "cam_train.epochs=2",
        "cam_train.batch_size=4",
        "cam_train.img_size=48",
        "cam_train.num_workers=0",
        "cam_train.log_every=2",
        "cam_train.warmup_epochs=1",
        "cam_gen.num_workers=0",
        "seeds.workers=1",
    ]


def tiny_config(data: Path, run_dir: Path, *overrides: str) -> RunConfig:
    return load_config("demo", [*tiny_overrides(data, run_dir), *overrides])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0]


def test_train_writes_log_checkpoint_and_selection(tiny_data: Path, tmp_path: Path) -> None:
    ctx = open_run(tiny_config(tiny_data, tmp_path))
    model_path = train_cam(ctx)
    assert model_path == tmp_path / "cam" / "model.safetensors"
    model = load_cam_model(model_path)
    assert model.config.num_classes == 3 and not model.training
    records = [json.loads(line) for line in (tmp_path / "cam" / "log.jsonl").read_text().splitlines()]
    events = [r["event"] for r in records]
    assert events[0] == "start" and records[0]["select_checkpoint"] == "last" and events[-1] == "done"
    iters = [r for r in records if r["event"] == "iter"]
    assert [(r["epoch"], r["iter"]) for r in iters] == [(1, 2), (1, 4), (2, 2), (2, 4)]
    assert all({"cls", "coarse", "fine", "total", "lr"} <= set(r) for r in iters)
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and all(r["seconds"] > 0 for r in epochs)
    for r in epochs:
        assert r["total"] == pytest.approx(r["cls"] + r["coarse"] + r["fine"], rel=1e-5)
    selection = json.loads((tmp_path / "cam" / "selection.json").read_text())
    assert selection["mode"] == "last" and selection["epoch"] == 2
    state = _weights(model_path)
    assert set(state) == set(model.state_dict())


def test_resume_after_kill_continues_bit_identically(tiny_data: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_cam(open_run(tiny_config(tiny_data, straight)))
    # A run stopped after its first epoch, then the same command again with the full length.
    train_cam(open_run(tiny_config(tiny_data, resumed, "cam_train.epochs=1")))
    after_one = _weights(resumed / "cam" / "model.safetensors")
    train_cam(open_run(tiny_config(tiny_data, resumed)))
    a, b = _weights(straight / "cam" / "model.safetensors"), _weights(resumed / "cam" / "model.safetensors")
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(after_one[k], b[k]) for k in a)  # the second epoch did train
    events = [json.loads(line)["event"] for line in (resumed / "cam" / "log.jsonl").read_text().splitlines()]
    assert events.count("resume") == 1 and events.count("epoch") == 2
    # A finished run is not trained again.
    before = (resumed / "cam" / "model.safetensors").stat().st_mtime_ns
    train_cam(open_run(tiny_config(tiny_data, resumed)))
    assert (resumed / "cam" / "model.safetensors").stat().st_mtime_ns == before


def test_resume_with_other_settings_is_refused_before_loading(tiny_data: Path, tmp_path: Path) -> None:
    train_cam(open_run(tiny_config(tiny_data, tmp_path, "cam_train.epochs=1")))
    with pytest.raises(InputError, match=r"other settings \(changed: model\)") as err:
        train_cam(open_run(tiny_config(tiny_data, tmp_path, "cam_model.embed_dim=64")))
    assert err.value.path == tmp_path / "cam" / "state.safetensors"
    with pytest.raises(InputError, match=r"changed: batch_size, lr\)"):
        train_cam(open_run(tiny_config(tiny_data, tmp_path, "cam_train.batch_size=8", "cam_train.lr=0.1")))


def test_gt_miou_selection_keeps_the_best_epoch(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, tmp_path, "cam_train.select_checkpoint=gt_miou", "cam_train.epochs=3")
    train_cam(open_run(cfg))
    selection = json.loads((tmp_path / "cam" / "selection.json").read_text())
    history = selection["history"]
    assert selection["mode"] == "gt_miou" and [h["epoch"] for h in history] == [1, 2, 3]
    best = max(history, key=lambda h: h["miou"])
    assert selection["epoch"] == best["epoch"] and selection["miou"] == best["miou"]
    assert 0.10 <= selection["threshold"] <= 0.90  # the demo config's seeds.sweep
    records = [json.loads(line) for line in (tmp_path / "cam" / "log.jsonl").read_text().splitlines()]
    assert [r["kept_epoch"] for r in records if r["event"] == "select"][-1] == best["epoch"]
    assert not (tmp_path / "cam" / "select_cams").exists()


def test_class_count_and_batch_size_errors(tiny_data: Path, tmp_path: Path) -> None:
    bad = tiny_config(tiny_data, tmp_path, "cam_model.num_classes=5")
    with pytest.raises(InputError, match=r"3 foreground classes but cam_model\.num_classes is 5"):
        train_cam(open_run(bad))
    big = tiny_config(tiny_data, tmp_path / "big", "cam_train.batch_size=32")
    with pytest.raises(InputError, match="fewer than one batch"):
        train_cam(open_run(big))


def _tiny_model(refine: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = CAMConfig(**{**TRAIN_CAM, "drop_path": 0.0, "refine": refine})
    return build_cam_model(cfg).eval()


def test_cam_kinds_pick_the_right_map() -> None:
    cpu, mean, std = torch.device("cpu"), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    refining, plain = _tiny_model(refine=True), _tiny_model(refine=False)

    def cams(model: torch.nn.Module, kind: str) -> torch.Tensor:
        return multiscale_cam(model, image, [1, 3], [1.0, 1.5], mean, std, cpu, kind=kind)[0]

    torch.testing.assert_close(cams(refining, "default"), cams(refining, "refined"))
    torch.testing.assert_close(cams(plain, "default"), cams(plain, "fused"))
    torch.testing.assert_close(cams(refining, "fused"), cams(plain, "fused"))  # same weights
    assert not torch.allclose(cams(refining, "fused"), cams(refining, "refined"))
    # 'coarse' is ReLU(coarse CAM) fused exactly like the others.
    inputs = preprocess_scales(image, [1.0, 1.5], mean, std)
    with torch.no_grad():
        maps = [F.relu(refining(torch.stack([x, x.flip(-1)])).coarse_cam) for x in inputs]
    expected, _ = fuse_cams(
        [m[k] for m in maps for k in (0, 1)], [False, True] * 2, label_vector([1, 3], 3), (40, 56)
    )
    torch.testing.assert_close(cams(refining, "coarse"), expected)
    no_flip = multiscale_cam(refining, image, [2], [1.0], mean, std, cpu, flip=False)[0]
    assert no_flip.shape == (1, 40, 56)
    with pytest.raises(InputError, match="unknown CAM kind"):
        cams(refining, "best")


def test_amp_runs_the_backbone_in_bf16_and_the_cam_heads_in_float32() -> None:
    cpu, mean, std = torch.device("cpu"), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    image = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    model = _tiny_model(refine=True)
    seen: dict[str, torch.dtype] = {}
    model.head.register_forward_pre_hook(lambda _, args: seen.update(head=args[0].dtype))
    model.backbone.vit.blocks[0].attn.qkv.register_forward_hook(
        lambda _m, _a, out: seen.update(qkv=out.dtype)
    )
    exact = multiscale_cam(model, image, [1, 2], [1.0], mean, std, cpu)[0]
    model.prepare_inference(ExecutionPolicy.cam_inference(cpu, bf16=True))
    fast = multiscale_cam(model, image, [1, 2], [1.0], mean, std, cpu)[0]
    assert seen == {"head": torch.float32, "qkv": torch.bfloat16}
    # (A random tiny model's CAMs are too flat for a tight bf16 tolerance; the benchmark checks seeds.)
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    assert fast.min() == 0 and 0.9 < fast.max() <= 1  # min–max normalised (ε keeps the max just below 1)


def test_a_diverging_loss_stops_training_with_a_hint(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, tmp_path, "cam_train.warmup_epochs=0", "cam_train.lr=1e35")
    with pytest.raises(InputError, match=r"training diverged: .* of epoch 1; lower cam_train\.lr") as err:
        train_cam(open_run(cfg))
    assert err.value.path == tmp_path / "cam" / "log.jsonl"
    assert not (tmp_path / "cam" / "model.safetensors").exists()
    assert not (tmp_path / "cam" / "state.safetensors").exists()


def test_backbone_lr_scale_zero_freezes_the_pretrained_backbone_only() -> None:
    torch.manual_seed(0)
    model = build_cam_model(CAMConfig(**TINY_CAM)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_adamw(param_groups(model, 0.0), 1e-2, 0.03)
    set_lr(optimizer, 1e-2)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    cam_loss(model(x), y)["total"].backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "backbone.vit.cls_token" in moved and any(n.startswith("head.") for n in moved)
    assert not any(n.startswith(("backbone.vit.blocks.", "backbone.vit.patch_embed.")) for n in moved)
    assert "backbone.vit.pos_embed" not in moved  # the position grid is pretrained too
    with pytest.raises(InputError, match="backbone_lr_scale must be >= 0"):
        param_groups(model, -1.0)


def test_backbone_lr_scale_is_a_setting_of_the_run(tiny_data: Path, tmp_path: Path) -> None:
    train_cam(
        open_run(tiny_config(tiny_data, tmp_path, "cam_train.epochs=1", "cam_train.backbone_lr_scale=0.1"))
    )
    with pytest.raises(InputError, match=r"changed: backbone_lr_scale\)"):
        train_cam(open_run(tiny_config(tiny_data, tmp_path, "cam_train.epochs=2")))
