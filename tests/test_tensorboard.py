"""TensorBoard beside the JSONL log: the scalars and image grids both trainers write, read back with
tensorboard's own reader, and training that is bit-identical with it off or not installed."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_train_cam import tiny_config
from test_train_seg import demo, tiny_ctx  # noqa: F401  (the module-scoped demo fixture)

from weaktr.data.info import DatasetInfo
from weaktr.runtime.context import open_run
from weaktr.runtime.tensorboard import Board, grid
from weaktr.stages.train_cam import train_cam
from weaktr.stages.train_seg import train_seg


def _events(run: Path) -> Any:
    """The run's event files through tensorboard's own reader (the test skips without tensorboard)."""
    reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = reader.EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _records(path: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]


def _image(acc: Any, tag: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(e.encoded_image_string))) for e in acc.Images(tag)]


def _same_tensors(a: Path, b: Path) -> bool:
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_train_cam_writes_scalars_and_cam_grids_without_changing_training(
    demo: DatasetInfo,  # noqa: F811
    tmp_path: Path,
) -> None:
    data = demo.root / "dataset.yaml"
    train_cam(open_run(tiny_config(data, tmp_path / "on", "cam_train.select_checkpoint=gt_miou")))
    off = tiny_config(data, tmp_path / "off", "cam_train.select_checkpoint=gt_miou", "tensorboard=false")
    train_cam(open_run(off))
    assert not (tmp_path / "off" / "tb").exists()
    for name in ("model.safetensors", "state.safetensors"):
        assert _same_tensors(tmp_path / "on" / "cam" / name, tmp_path / "off" / "cam" / name), name

    acc = _events(tmp_path / "on")
    scalars = set(acc.Tags()["scalars"])
    assert {f"train-cam/iter/{k}" for k in ("cls", "coarse", "fine", "total", "lr")} <= scalars
    assert {"train-cam/epoch/total", "train-cam/select/miou", "train-cam/select/kept_epoch"} <= scalars
    iters = _records(tmp_path / "on" / "cam" / "log.jsonl", "iter")
    total = acc.Scalars("train-cam/iter/total")
    assert [e.step for e in total] == [r["step"] for r in iters] == [2, 4, 6, 8]
    assert [e.value for e in total] == pytest.approx([r["total"] for r in iters], rel=1e-6)
    assert [e.step for e in acc.Scalars("train-cam/select/miou")] == [1, 2]
    grids = _image(acc, "train-cam/cams")
    assert [e.step for e in acc.Images("train-cam/cams")] == [1, 2]
    # four 48 px images in a row each, beside their CAMs: not blank, and different after more training
    assert grids[0].shape[0] == 4 * 48 + 5 * 2 and grids[0].std() > 0
    assert not np.array_equal(grids[0], grids[1])


def test_train_seg_writes_scalars_and_seed_prediction_grids_without_changing_training(
    demo: DatasetInfo,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    masks = demo.path(demo.masks)
    train_seg(tiny_ctx(demo, tmp_path / "on"), masks, gt_dir=masks)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
        train_seg(tiny_ctx(demo, tmp_path / "missing"), masks, gt_dir=masks)
    assert not (tmp_path / "missing" / "tb").exists()
    for name in ("model.safetensors", "state.safetensors"):
        assert _same_tensors(tmp_path / "on" / "seg" / name, tmp_path / "missing" / "seg" / name), name

    acc = _events(tmp_path / "on")
    scalars = set(acc.Tags()["scalars"])
    for key in ("loss", "clipped_fraction", "kept_precision", "seed_precision"):
        assert f"train-seg/iter/{key}" in scalars and f"train-seg/epoch/{key}" in scalars, key
    assert [e.step for e in acc.Scalars("train-seg/iter/lr")] == [2, 4, 6, 8]
    epochs = _records(tmp_path / "on" / "seg" / "log.jsonl", "epoch")
    val = acc.Scalars("train-seg/epoch/val_miou")
    assert [e.step for e in val] == [1, 2]
    assert [e.value for e in val] == pytest.approx([r["val_miou"] for r in epochs], rel=1e-6)
    for tag in ("train-seg/seeds", "train-seg/val"):
        assert [e.step for e in acc.Images(tag)] == [1, 2], tag
        image = _image(acc, tag)[0]
        assert image.shape == (4 * 48 + 5 * 2, 3 * 48 + 4 * 2, 3) and image.std() > 0


def test_board_is_silent_when_off_and_grids_pad_short_rows(tmp_path: Path) -> None:
    board = Board(tmp_path / "tb", enabled=False)
    board.scalars("x", {"a": 1.0}, 1)
    board.image("x/img", np.zeros((2, 2, 3), np.uint8), 1)
    board.close()
    assert not board.active and not (tmp_path / "tb").exists()
    red, blue = np.zeros((4, 6, 3), np.uint8), np.zeros((2, 3, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 100
    tiled = grid([[red, blue], [blue]])
    assert tiled.shape == (2 + 4 + 2 + 4 + 2, 2 + 6 + 2 + 6 + 2, 3)
    assert (tiled[2:6, 2:8] == red).all() and (tiled[2:4, 10:13] == blue).all()
    assert (tiled[8:12, 10:16] == 0).all()  # the missing panel of the short row is blank
