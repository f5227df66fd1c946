"""Phase-2 training on a tiny generated data set: logs, checkpoints, lr schedule, resume, input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SEG, model_override

import weaktr.stages.train_seg as ts
from weaktr.config import RunConfig, load_config
from weaktr.data.demo import generate_demo
from weaktr.data.images import load_label_map
from weaktr.data.info import DatasetInfo
from weaktr.engine.optim import poly_lr
from weaktr.engine.state import load_training_state
from weaktr.errors import InputError
from weaktr.io import save_label_png
from weaktr.models.segmenter import load_segmenter
from weaktr.runtime.context import RunContext, open_run

SEG_MODEL = model_override("seg_model", {**TINY_SEG, "drop_path": 0.1})


def tiny_overrides(dataset: Path, run_dir: Path) -> list[str]:
    """A 1-block conv-stem segmenter on 48 px images: 4 iterations per epoch, clipping always on."""
    return [
        f"run_dir={run_dir}",
        "device=cpu",
        f"data.dataset={dataset}",
        "data.train_split=train",
        "data.val_split=val",
        SEG_MODEL,
        "seg_train.epochs=2",
        "seg_train.batch_size=4",
        "seg_train.lr=0.01",
        "seg_train.min_lr=0.0001",
        "seg_train.crop=32",
        "seg_train.base_size=40",
        "seg_train.ratio_range=[0.75, 1.25]",
        "seg_train.gc={mode: code, tau: 999.0, cell: 16}",
        "seg_train.num_workers=0",
        "seg_train.pretrained=null",
        "seg_train.log_every=2",
        "predict.scales=[1.0]",
        "predict.window=32",
        "predict.stride=16",
        "predict.base_size=40",
        "predict.window_batch=8",
        "predict.workers=1",
    ]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DatasetInfo:
    """16 train + 4 val images of 48 px with 3 foreground classes."""
    root = tmp_path_factory.mktemp("demo")
    return generate_demo(root, n_train=16, n_val=4, size=48, num_classes=3, seed=0)


def tiny_ctx(demo: DatasetInfo, run_dir: Path, *extra: str) -> RunContext:
    cfg = load_config(None, [*tiny_overrides(demo.root / "dataset.yaml", run_dir), *extra])
    return open_run(cfg)


def corrupted_seeds(demo: DatasetInfo, out: Path, fraction: float = 0.3) -> Path:
    """The GT masks with a block of each image relabelled: noisy seeds whose errors GT can expose."""
    rng = np.random.default_rng(0)
    for i in demo.ids("train"):
        mask = load_label_map(demo.mask_path(i)).copy()
        h, w = mask.shape
        side = int(h * np.sqrt(fraction))
        top, left = rng.integers(0, h - side), rng.integers(0, w - side)
        mask[top : top + side, left : left + side] = rng.integers(0, 4)
        save_label_png(out / f"{i}.png", mask)
    return out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "seg" / "log.jsonl").read_text().splitlines()]


def test_train_logs_checkpoint_and_selection(demo: DatasetInfo, tmp_path: Path) -> None:
    seeds = corrupted_seeds(demo, tmp_path / "seeds")
    ctx = tiny_ctx(demo, tmp_path / "run")
    model_path = ts.train_seg(ctx, seeds, gt_dir=demo.path(demo.masks))
    assert model_path == tmp_path / "run" / "seg" / "model.safetensors"
    model = load_segmenter(model_path)
    assert model.n_cls == 4 and model.cfg.depth == 1
    records = _records(tmp_path / "run")
    iters = [r for r in records if r["event"] == "iter"]
    assert [r["iter"] for r in iters] == [2, 4, 6, 8]
    for r in iters:
        for key in ("loss", "lr", "global_mean", "clipped_fraction", "kept_precision", "seed_precision"):
            assert key in r and r[key] is not None, key
        assert 0.0 < r["clipped_fraction"] < 1.0  # tau 999: clipping runs on every step
        assert r["kept_precision"] >= r["seed_precision"] - 0.05
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0.0 <= r["val_miou"] <= 1.0 for r in epochs)
    selection = json.loads((tmp_path / "run" / "seg" / "selection.json").read_text())
    assert selection["select_checkpoint"] == "last" and selection["epoch"] == 2
    assert [h["epoch"] for h in selection["history"]] == [1, 2]
    assert records[-1]["event"] == "done"


def test_lr_schedule_is_poly_per_iteration_with_encoder_scale(
    demo: DatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[float, float]] = []
    original = ts.gradient_clipping_loss

    def spy(*args, **kwargs):
        seen.append((optimizer_ref[0].param_groups[0]["lr"], optimizer_ref[0].param_groups[1]["lr"]))
        return original(*args, **kwargs)

    optimizer_ref: list[torch.optim.Optimizer] = []
    build = ts.build_sgd

    def capture(*args, **kwargs):
        optimizer_ref.append(build(*args, **kwargs))
        return optimizer_ref[0]

    monkeypatch.setattr(ts, "gradient_clipping_loss", spy)
    monkeypatch.setattr(ts, "build_sgd", capture)
    ctx = tiny_ctx(demo, tmp_path / "run", "seg_train.eval_every=0", "seg_train.gc.mode=none")
    ts.train_seg(ctx, demo.path(demo.masks))
    assert len(seen) == 8
    for t, (enc, dec) in enumerate(seen):
        expected = poly_lr(t, 8, 0.01, 1e-4, 0.9)
        assert dec == pytest.approx(expected) and enc == pytest.approx(0.1 * expected)
    assert seen[0][1] == pytest.approx(0.01)
    assert seen[4][1] == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4)
    logged = [r["lr"] for r in _records(tmp_path / "run") if r["event"] == "iter"]
    assert logged == pytest.approx([s[1] for s in seen][1::2])


def test_resume_after_kill_is_bit_identical(
    demo: DatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeds = demo.path(demo.masks)
    straight = ts.train_seg(tiny_ctx(demo, tmp_path / "a", "seg_train.eval_every=0"), seeds)

    calls = {"n": 0}
    original = ts.gradient_clipping_loss

    def killed_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(ts, "gradient_clipping_loss", killed_in_epoch_two)
    ctx_b = tiny_ctx(demo, tmp_path / "b", "seg_train.eval_every=0")
    with pytest.raises(KeyboardInterrupt):
        ts.train_seg(ctx_b, seeds)
    assert load_training_state(tmp_path / "b/seg/state.safetensors", load_segmenter(straight))["epoch"] == 1
    monkeypatch.setattr(ts, "gradient_clipping_loss", original)
    resumed = ts.train_seg(tiny_ctx(demo, tmp_path / "b", "seg_train.eval_every=0"), seeds)
    a, b = load_segmenter(straight).state_dict(), load_segmenter(resumed).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    events = [r["event"] for r in _records(tmp_path / "b")]
    assert events.count("resume") == 1


def test_gt_val_keeps_the_best_epoch(
    demo: DatasetInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores = iter([0.5, 0.3])
    monkeypatch.setattr(ts, "evaluate_segmenter", lambda ctx, model, split: {"miou": next(scores)})
    saved: list[int] = []
    save = ts.save_segmenter
    monkeypatch.setattr(ts, "save_segmenter", lambda path, model: (saved.append(1), save(path, model)))
    ctx = tiny_ctx(demo, tmp_path / "run", "seg_train.select_checkpoint=gt_val")
    ts.train_seg(ctx, demo.path(demo.masks))
    selection = json.loads((tmp_path / "run" / "seg" / "selection.json").read_text())
    assert (selection["epoch"], selection["val_miou"]) == (1, 0.5)
    assert len(saved) == 1


def test_input_errors_name_the_problem(demo: DatasetInfo, tmp_path: Path) -> None:
    ctx = tiny_ctx(demo, tmp_path / "run")
    with pytest.raises(InputError, match="seed folder not found") as err:
        ts.train_seg(ctx, tmp_path / "nowhere")
    assert err.value.path == tmp_path / "nowhere"

    seeds = tmp_path / "seeds"
    shutil.copytree(demo.path(demo.masks), seeds)
    bad_id = demo.ids("train")[3]
    mask = load_label_map(seeds / f"{bad_id}.png").copy()
    mask[0, 0] = 7
    save_label_png(seeds / f"{bad_id}.png", mask)
    with pytest.raises(InputError, match=r"label ids \[7\]") as err:
        ts.train_seg(ctx, seeds)
    assert err.value.path == seeds / f"{bad_id}.png"

    wrong = tiny_ctx(demo, tmp_path / "run2", "seg_model.n_cls=21")
    with pytest.raises(InputError, match="n_cls is 21"):
        ts.train_seg(wrong, demo.path(demo.masks))


def test_config_defaults_are_the_authors() -> None:
    st = RunConfig().seg_train
    assert (st.lr, st.min_lr, st.power, st.momentum, st.nesterov, st.weight_decay) == (
        1e-4,
        1e-5,
        0.9,
        0.9,
        True,
        0.0,
    )
    assert ts.GC_MODES == {"code": "batch", "per_image": "per_image", "none": "naive"}
