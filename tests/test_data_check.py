"""The data check: prepare and open_run decode every image and mask, and worker errors reach the user as one
line (a DataLoader worker, the CRF / seed process pools)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train_cam import TINY_MODEL
from torch.utils.data import DataLoader

from weaktr.cam.seeds import make_seeds
from weaktr.cli import main
from weaktr.config import load_config
from weaktr.crf import CRFParams
from weaktr.data import check
from weaktr.data.check import FileCheck, check_files
from weaktr.data.folder import prepare_folder
from weaktr.data.info import DatasetInfo
from weaktr.data.torch_datasets import ClassificationDataset
from weaktr.errors import DataCheckError, InputError
from weaktr.io import save_cams
from weaktr.runtime import context
from weaktr.runtime.context import open_run
from weaktr.stages import predict


def make_folder(root: Path, n: int = 8, hw: tuple[int, int] = (40, 50), masks: bool = False) -> list[str]:
    """``n`` random PNGs (alternately 'cat' and 'dog') with a labels CSV, optionally with masks."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        if masks:
            Image.fromarray(np.full(hw, 1 + i % 2, np.uint8), "L").save(root / "masks" / f"im{i}.png")
        rows.append(f"im{i}.png,{'cat' if i % 2 else 'dog'}\n")
    (root / "labels.csv").write_text("image,labels\n" + "".join(rows))
    return [f"im{i}" for i in range(n)]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def errors_of(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    """The error lines of a failing command (log lines and progress bars aside); never a traceback."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("weaktr ")]


def _prepare(root: Path, *extra: str) -> list[str]:
    return [
        "prepare",
        "folder",
        "--images",
        str(root / "images"),
        "--labels",
        str(root / "labels.csv"),
        *extra,
    ]


def test_prepare_lists_each_bad_image_and_writes_nothing(tmp_path: Path, capsys) -> None:
    make_folder(tmp_path, n=64)  # enough files for the process pool on a machine with 2+ cores
    img = tmp_path / "images"
    truncate(img / "im3.png")
    (img / "im5.png").write_bytes(b"")
    (img / "im7.png").write_text("not an image")
    lines = errors_of(capsys, *_prepare(tmp_path, "--out", str(tmp_path / "out")))
    assert lines == [
        f"weaktr prepare: error: {img / 'im3.png'}: not a readable image (image file is truncated)",
        f"weaktr prepare: error: {img / 'im5.png'}: empty file (0 bytes)",
        f"weaktr prepare: error: {img / 'im7.png'}: not a readable image (cannot identify image file "
        f"'{img / 'im7.png'}')",
    ]
    assert not (tmp_path / "out").exists()


def test_prepare_checks_mask_size_and_ids(tmp_path: Path, capsys) -> None:
    make_folder(tmp_path, masks=True)
    masks = tmp_path / "masks"
    Image.fromarray(np.ones((40, 49), np.uint8), "L").save(masks / "im1.png")
    Image.fromarray(np.full((40, 50), 3, np.uint8), "L").save(masks / "im2.png")  # classes: 0..2
    Image.fromarray(np.full((40, 50), 255, np.uint8), "L").save(masks / "im4.png")  # ignore is fine
    lines = errors_of(capsys, *_prepare(tmp_path, "--masks", str(masks), "--out", str(tmp_path / "out")))
    assert lines == [
        f"weaktr prepare: error: {masks / 'im1.png'}: label map size 40x49 (HxW) does not match the image "
        "size 40x50",
        f"weaktr prepare: error: {masks / 'im2.png'}: label ids [3] are out of range (valid: 0..2 and 255)",
    ]
    assert not (tmp_path / "out").exists()


def test_the_first_ten_problems_are_listed_with_a_count(tmp_path: Path) -> None:
    ids = make_folder(tmp_path, n=14)
    for i in ids[:12]:
        (tmp_path / "images" / f"{i}.png").write_bytes(b"")
    items = [FileCheck(tmp_path / "images" / f"{i}.png") for i in ids]
    with pytest.raises(DataCheckError) as err:
        check_files(items, 3, workers=1)
    lines = err.value.lines()
    assert len(lines) == 11 and lines[0].endswith("im0.png: empty file (0 bytes)")
    assert lines[-1] == "12 unusable files of 14 in all; the first 10 are listed"


def test_pool_and_in_process_find_the_same_problems_in_order(tmp_path: Path) -> None:
    ids = make_folder(tmp_path, n=64)
    for i in (ids[2], ids[33]):
        truncate(tmp_path / "images" / f"{i}.png")
    items = [FileCheck(tmp_path / "images" / f"{i}.png", hw=(40, 50)) for i in ids]
    items[20] = FileCheck(items[20].image, hw=(41, 50))  # annotations (COCO) giving another size
    found = []
    for workers in (1, 2):
        with pytest.raises(DataCheckError) as err:
            check_files(items, 3, workers=workers)
        found.append(err.value.lines())
    assert found[0] == found[1] and len(found[0]) == 3
    assert "image is 40x50 (HxW) but its annotations say 41x50" in found[0][1]


def test_prepare_records_the_check_and_open_run_trusts_it_until_a_file_changes(tmp_path, monkeypatch) -> None:
    make_folder(tmp_path)
    info = prepare_folder(tmp_path / "images", tmp_path / "labels.csv", tmp_path / "data", val_fraction=0.25)
    assert info.checked and DatasetInfo.load(tmp_path / "data").checked == info.checked
    cfg = load_config(
        "demo", [f"data.dataset={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}", "device=cpu"]
    )
    calls: list[int] = []
    real = context.check_files
    monkeypatch.setattr(context, "check_files", lambda items, n: calls.append(len(items)) or real(items, n))
    open_run(cfg)
    assert calls == [] and not (tmp_path / "run" / "data_check.json").exists()
    truncate(tmp_path / "images" / "im6.png")
    with pytest.raises(DataCheckError, match=r"im6\.png: not a readable image \(image file is truncated\)"):
        open_run(cfg)
    assert calls == [8]


def test_open_run_checks_an_unprepared_data_set_once(tmp_path: Path, monkeypatch) -> None:
    make_folder(tmp_path)
    info = prepare_folder(tmp_path / "images", tmp_path / "labels.csv", tmp_path / "data")
    info.checked = None  # as if written by hand
    info.save(tmp_path / "data" / "dataset.yaml")
    cfg = load_config(
        "demo", [f"data.dataset={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}", "device=cpu"]
    )
    calls: list[int] = []
    real = context.check_files
    monkeypatch.setattr(context, "check_files", lambda items, n: calls.append(len(items)) or real(items, n))
    open_run(cfg)
    open_run(cfg)
    assert calls == [8]
    stamp = json.loads((tmp_path / "run" / "data_check.json").read_text())
    assert stamp["fingerprint"] == check.fingerprint(check.dataset_items(info), info.n_cls)


def test_a_command_on_an_unchecked_bad_data_set_fails_before_writing(tmp_path: Path, capsys) -> None:
    make_folder(tmp_path)
    info = prepare_folder(tmp_path / "images", tmp_path / "labels.csv", tmp_path / "data")
    truncate(tmp_path / "images" / "im2.png")
    run = tmp_path / "run"
    lines = errors_of(
        capsys, "train-cam", "--config", "demo", "--run-dir", str(run), f"data.dataset={info.root}"
    )
    assert lines == [
        f"weaktr train-cam: error: {tmp_path / 'images' / 'im2.png'}: not a readable image "
        "(image file is truncated)"
    ]
    assert not run.exists()


def _corrupt_keeping_size(path: Path) -> None:
    """Damage a PNG's pixel data without changing its size (a fingerprint over sizes cannot see it)."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 64] = bytes(64)
    path.write_bytes(bytes(data))


def test_a_dataloader_worker_error_becomes_its_one_line(tmp_path: Path) -> None:
    make_folder(tmp_path)
    info = prepare_folder(tmp_path / "images", tmp_path / "labels.csv", tmp_path / "data", val_fraction=0)
    bad = tmp_path / "images" / "im4.png"
    truncate(bad)
    with pytest.raises(InputError) as err:
        list(DataLoader(ClassificationDataset(info, "train"), batch_size=2, num_workers=1))
    assert "Original Traceback" in str(err.value)
    assert err.value.lines() == [f"{bad}: not a readable image (image file is truncated)"]


def test_train_cam_reports_a_file_damaged_after_the_check_as_one_line(tmp_path: Path, capsys) -> None:
    make_folder(tmp_path, hw=(48, 48))
    info = prepare_folder(tmp_path / "images", tmp_path / "labels.csv", tmp_path / "data", val_fraction=0)
    bad = tmp_path / "images" / "im5.png"
    _corrupt_keeping_size(bad)
    argv = ["train-cam", "--config", "demo", "--run-dir", str(tmp_path / "run"), f"data.dataset={info.root}"]
    tiny = [
        "device=cpu",
        TINY_MODEL,
        "cam_model.num_classes=2",
        "cam_train.epochs=1",
        "cam_train.batch_size=4",
        "cam_train.img_size=48",
        "cam_train.num_workers=1",
        "cam_train.select_checkpoint=last",
    ]
    lines = errors_of(capsys, *argv, *tiny)
    assert len(lines) == 1 and lines[0].startswith(f"weaktr train-cam: error: {bad}: not a readable image (")


def test_seed_pool_errors_keep_their_path(tmp_path: Path) -> None:
    for i in range(4):
        save_cams(tmp_path / "cams" / f"{i}.npz", np.random.rand(1, 8, 8), [1])
    (tmp_path / "cams" / "2.npz").write_bytes(b"damaged")
    with pytest.raises(InputError) as err:
        make_seeds(
            tmp_path / "cams", ["0", "1", "2", "3"], tmp_path / "seeds", 0.5, workers=2, progress=False
        )
    assert err.value.path == tmp_path / "cams" / "2.npz"
    assert err.value.lines() == [str(err.value)] and "\n" not in str(err.value)


def _bad_image_crf(image: np.ndarray, scores: np.ndarray, params: CRFParams) -> np.ndarray:
    raise InputError("stands for any bad input met in a CRF process", "/data/img.jpg")


def test_predict_crf_queue_errors_keep_their_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(predict, "softmax_crf", _bad_image_crf)  # forked workers inherit it
    queue = predict._CRFQueue(2)
    job = (np.zeros((4, 4, 3), np.uint8), np.ones((1, 4, 4)), np.zeros(1, np.int64), CRFParams.voc_softmax())
    with pytest.raises(InputError) as err:
        queue.submit((*job, tmp_path / "p.png", None))
        queue.close()
    assert err.value.path == Path("/data/img.jpg")
    assert str(err.value) == "/data/img.jpg: stands for any bad input met in a CRF process"
