"""The demo's pretraining: the synthetic shapes set and ``weaktr pretrain``, whose file loads through
``cam_train.pretrained=`` / ``seg_train.pretrained=`` into both networks."""

from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from weaktr.commands import pretrain as pretrain_command
from weaktr.config import load_config
from weaktr.data import demo, pretrain_shapes
from weaktr.engine.optim import warmup_cosine_lr
from weaktr.errors import InputError
from weaktr.io import load_checkpoint
from weaktr.models.cam import CAMConfig, build_cam_model
from weaktr.models.execution import ExecutionPolicy
from weaktr.models.segmenter import SegConfig, build_segmenter
from weaktr.pretrain_settings import PretrainSettings
from weaktr.runtime.context import amp_enabled
from weaktr.stages.pretrain import augment, flip, mean_average_precision, pretrain

TINY = ["--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--n-train", "48", "--n-val", "28"]
TINY_RUN = [*TINY, "--batch-size", "16", "--epochs", "2", "--max-steps", "4", "--workers", "1"]


def _cli(argv: list[str]) -> int:
    """``weaktr pretrain ARGS`` through the command module's own parser (as cli.py registers it)."""
    parser = argparse.ArgumentParser(prog="weaktr")
    pretrain_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pretrain", *argv])
    return args.func(args)


def test_classes_many_and_disjoint_from_the_demo():
    names = pretrain_shapes.CLASSES
    assert len(names) >= 24 and len(set(names)) == len(names)
    assert not set(names) & set(demo.SHAPES)  # not even the demo's optional hexagon / crescent


def test_every_class_is_a_distinct_visible_shape():
    grid = (np.mgrid[0:64, 0:64].astype(np.float64) + 0.5) / 32 - 1.0  # [-1, 1]², v down
    masks = {name: pretrain_shapes.shape_mask(name, grid[1], grid[0]) for name in pretrain_shapes.CLASSES}
    for name, m in masks.items():
        assert 0.08 < m.mean() < 0.8, name
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (masks[a] ^ masks[b]).mean() > 0.05, (a, b)
    with pytest.raises(ValueError, match="unknown"):
        pretrain_shapes.shape_mask("disc", grid[1], grid[0])


def test_render_deterministic_balanced_any_worker_count():
    K = len(pretrain_shapes.CLASSES)
    x, y = pretrain_shapes.render_set(seed=3, start=5, count=2 * K, size=48)
    assert x.shape == (2 * K, 48, 48, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(y, (np.arange(2 * K) + 5) % K)
    assert x.min() < 40 and x.max() > 215 and all(img.std() > 5 for img in x)  # full range, no blanks
    x2, y2 = pretrain_shapes.render_set(seed=3, start=5, count=2 * K, size=48, workers=2)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    other, _ = pretrain_shapes.render_set(seed=4, start=5, count=2 * K, size=48)
    assert not np.array_equal(x, other)
    one, label = pretrain_shapes.render_image(3, 6, 48)
    assert np.array_equal(one, x[1]) and label == y[1]


def test_augment_is_seeded_and_keeps_shape():
    images = torch.rand(4, 3, 32, 32)
    a = augment(images, (0.6, 1.0), torch.Generator().manual_seed(1))
    b = augment(images, (0.6, 1.0), torch.Generator().manual_seed(1))
    assert a.shape == images.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1  # a crop inside the image: no padding values
    c = augment(images, (0.6, 1.0), torch.Generator().manual_seed(2))
    assert not torch.equal(a, c)


def test_warmup_cosine_schedule():
    lrs = [warmup_cosine_lr(s, 100, 1e-3, 10, 1e-5) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 10) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[100] == pytest.approx(1e-5) and lrs[55] == pytest.approx((1e-3 + 1e-5) / 2)


def test_same_seed_same_bytes(tmp_path):
    """Bit-identical files for one seed, in the precision a real run uses here (bf16 where native)."""
    cpu = torch.device("cpu")
    policy = ExecutionPolicy.training(cpu, amp_enabled(cpu, True, amp_cpu=True))
    settings = PretrainSettings(
        embed_dim=16, depth=1, num_heads=2, n_train=32, n_val=0, batch_size=16, epochs=1
    )
    for name in ("a", "b"):
        pretrain(settings, tmp_path / f"{name}.safetensors", policy)
    other = PretrainSettings(**{**settings.__dict__, "seed": 1})
    pretrain(other, tmp_path / "c.safetensors", policy)
    a, b, c = ((tmp_path / f"{n}.safetensors").read_bytes() for n in "abc")
    assert a == b and a != c
    state, config = load_checkpoint(tmp_path / "a.safetensors")  # the architecture rides along
    assert config["embed_dim"] == 16 and config["stem"] == "conv" and "head.weight" in state


def test_command_output_loads_into_both_networks(tmp_path, capsys):
    out = tmp_path / "vit.safetensors"
    assert _cli(["--out", str(out), *TINY_RUN]) == 0
    assert "val acc" in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    for key in ("command", "seed", "data_generator", "data_seed", "epochs", "steps", "train_acc", "val_acc"):
        assert meta[key], key
    assert meta["command"].startswith("weaktr pretrain --out ") and "--max-steps 4" in meta["command"]
    assert meta["data_generator"] == pretrain_shapes.GENERATOR and meta["steps"] == "4"
    # one object: nothing of the multi-object option in the file (its bytes are what they were before it)
    assert "objects" not in meta and "objects" not in json.loads(meta["settings"])
    assert "--objects" not in meta["command"]
    assert meta["weaktr_version"] and not math.isnan(float(meta["val_acc"]))
    state = load_file(str(out))
    assert {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "blocks.1.mlp.fc2.weight",
        "norm.weight",
    } <= set(state)
    assert state["head.weight"].shape == (len(pretrain_shapes.CLASSES), 32)
    assert state["blocks.0.attn.qkv.weight"].dtype == torch.float16

    sizes = ["embed_dim=32", "depth=2", "num_heads=2"]
    cfg = load_config(
        "demo",
        [
            f"cam_train.pretrained={out}",
            f"seg_train.pretrained={out}",
            *(f"cam_model.{s}" for s in sizes),
            *(f"seg_model.{s}" for s in sizes),
        ],
    )
    cam = build_cam_model(CAMConfig.from_dict(cfg.cam_model), cfg.cam_train.pretrained).state_dict()
    C = cfg.cam_model["num_classes"]
    for key in ("blocks.1.mlp.fc2.weight", "patch_embed.convs.1.running_var", "patch_embed.proj.weight"):
        assert torch.equal(cam[f"backbone.vit.{key}"], state[key].float()), key
    assert torch.equal(cam["backbone.vit.pos_embed"][:, C:], state["pos_embed"][:, 1:].float())
    assert torch.equal(cam["backbone.vit.cls_token"], state["cls_token"].float().expand(-1, C, -1))
    seg = build_segmenter(SegConfig.from_dict(cfg.seg_model), cfg.seg_train.pretrained).state_dict()
    for key in ("blocks.0.attn.qkv.weight", "pos_embed", "norm.weight", "patch_embed.convs.0.weight"):
        assert torch.equal(seg[f"encoder.{key}"], state[key].float()), key


def test_mean_patch_pooling_reads_every_patch_token():
    """``--pool avg``: the head reads the mean patch token, so every patch token gets the loss."""
    from weaktr.errors import InputError
    from weaktr.stages.pretrain import build_classifier

    small = dict(embed_dim=32, depth=1, num_heads=2)
    token = build_classifier(PretrainSettings(**small), 5).eval()
    avg = build_classifier(PretrainSettings(**small, pool="avg"), 5).eval()
    avg.load_state_dict(token.state_dict())  # the same weights: only the pooling differs
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        tokens = token.forward_features(x)
        assert torch.allclose(token(x), token.head(tokens[:, 0]))
        assert torch.allclose(avg(x), avg.head(tokens[:, 1:].mean(1)), atol=1e-6)
    with pytest.raises(InputError, match="pool must be one of token, avg"):
        PretrainSettings(pool="max")
    parser = argparse.ArgumentParser(prog="weaktr")
    pretrain_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pretrain", "--pool", "avg", "--out", "v.safetensors"])
    assert pretrain_command.command_line(args) == "weaktr pretrain --out v.safetensors --pool avg"


def test_multi_object_images_deterministic_distinct_and_labelled():
    """``objects`` K > 1: 1..K objects of distinct classes, each visible, the label exactly them."""
    C, K, S = len(pretrain_shapes.CLASSES), 3, 64
    x, y = pretrain_shapes.render_set(seed=3, start=5, count=2 * C, size=S, objects=K)
    assert x.shape == (2 * C, S, S, 3) and x.dtype == np.uint8
    assert y.shape == (2 * C, C) and y.dtype == np.uint8 and set(np.unique(y)) <= {0, 1}
    counts = y.sum(1)
    assert counts.min() >= 1 and counts.max() <= K and set(counts) == {1, 2, 3}
    assert (y[np.arange(2 * C), (np.arange(2 * C) + 5) % C] == 1).all()  # the first object: index % C
    x2, y2 = pretrain_shapes.render_set(seed=3, start=5, count=2 * C, size=S, workers=2, objects=K)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    single, _ = pretrain_shapes.render_set(seed=3, start=5, count=2 * C, size=S)
    assert not any(np.array_equal(a, b) for a, b in zip(x, single, strict=True))  # a stream of its own
    for i in range(2 * C):
        img, drawn, owner = pretrain_shapes.scene_layout(3, 5 + i, S, K)
        assert np.array_equal(img, x[i]) and len(set(drawn)) == len(drawn)
        assert sorted(drawn) == np.flatnonzero(y[i]).tolist()
        assert owner.min() >= -1 and owner.max() == len(drawn) - 1
        for j in range(len(drawn)):
            assert (owner == j).sum() >= 20, (i, j)  # nothing labelled is hidden away
    one, label = pretrain_shapes.render_scene(3, 6, S, K)
    assert np.array_equal(one, x[1]) and np.array_equal(label, y[1])
    with pytest.raises(ValueError, match="objects must be"):
        pretrain_shapes.render_scene(3, 6, S, C + 1)
    with pytest.raises(InputError, match="objects must be"):
        PretrainSettings(objects=0)


def test_one_object_option_is_the_default():
    x, y = pretrain_shapes.render_set(seed=2, start=0, count=3, size=32)
    x1, y1 = pretrain_shapes.render_set(seed=2, start=0, count=3, size=32, objects=1)
    assert np.array_equal(x, x1) and np.array_equal(y, y1) and y1.dtype == np.int64
    assert "objects" not in PretrainSettings().as_dict()
    assert PretrainSettings(objects=2).as_dict()["objects"] == 2


def test_mean_average_precision_and_flip():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.1, 0.9]])
    labels = torch.tensor([[1, 0], [0, 0], [1, 1]], dtype=torch.uint8)
    # class 0: hits at ranks 1 and 3, AP (1 + 2/3) / 2; class 1: its one hit ranked first, AP 1
    assert mean_average_precision(scores, labels) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    only_first = labels * torch.tensor([1, 0], dtype=torch.uint8)  # a class without positives: left out
    assert mean_average_precision(scores, only_first) == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(mean_average_precision(scores, torch.zeros_like(labels)))
    assert mean_average_precision(labels.float(), labels) == 1.0
    images = torch.rand(8, 3, 4, 5)
    out = flip(images, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    assert all(f or torch.equal(o, i) for f, o, i in zip(flipped, out, images, strict=True))
    assert 0 < sum(flipped) < 8 and torch.equal(out, flip(images, torch.Generator().manual_seed(0)))


def test_multi_object_run_loads_through_pretrained(tmp_path, capsys):
    """``--objects 3``: a multi-label run (mAP, the multi-object generator in the metadata) whose file
    loads through ``pretrained:`` like the one-object file."""
    out = tmp_path / "multi.safetensors"
    assert _cli(["--out", str(out), *TINY_RUN, "--objects", "3", "--pool", "avg"]) == 0
    printed = capsys.readouterr().out
    assert "val mAP" in printed and "val acc" not in printed
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["data_generator"] == pretrain_shapes.MULTI_GENERATOR != pretrain_shapes.GENERATOR
    assert meta["objects"] == "3" and json.loads(meta["settings"])["objects"] == 3
    assert "--objects 3" in meta["command"] and meta["steps"] == "4"
    assert 0 <= float(meta["val_map"]) <= 1 and 0 <= float(meta["train_map"]) <= 1
    assert "val_acc" not in meta
    state = load_file(str(out))
    assert state["head.weight"].shape == (len(pretrain_shapes.CLASSES), 32)

    sizes = ["embed_dim=32", "depth=2", "num_heads=2"]
    overrides = [f"cam_train.pretrained={out}", f"seg_train.pretrained={out}"]
    cfg = load_config(
        "demo", [*overrides, *(f"cam_model.{s}" for s in sizes), *(f"seg_model.{s}" for s in sizes)]
    )
    cam = build_cam_model(CAMConfig.from_dict(cfg.cam_model), cfg.cam_train.pretrained).state_dict()
    assert torch.equal(cam["backbone.vit.blocks.1.mlp.fc2.weight"], state["blocks.1.mlp.fc2.weight"].float())
    seg = build_segmenter(SegConfig.from_dict(cfg.seg_model), cfg.seg_train.pretrained).state_dict()
    assert torch.equal(seg["encoder.blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"].float())


def test_multi_object_same_seed_same_bytes(tmp_path):
    cpu = torch.device("cpu")
    policy = ExecutionPolicy.training(cpu, amp_enabled(cpu, True, amp_cpu=True))
    settings = PretrainSettings(
        embed_dim=16, depth=1, num_heads=2, n_train=32, n_val=8, batch_size=16, epochs=1, objects=2
    )
    for name in ("a", "b"):
        pretrain(settings, tmp_path / f"{name}.safetensors", policy)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
