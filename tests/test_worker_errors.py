"""Whatever fails inside a worker reaches the user as one line naming the image and the cause: exit 2 for
bad input, exit 1 for a bug, the full traceback in the run's log.txt (``WEAKTR_DEBUG=1`` prints it).

One test per kind of worker: a DataLoader worker, a process pool (CRF queue, seeds, data check), a
fork pool (the demo generator) and a thread pool (the seed check); a bug in the main process too.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_check import make_folder
from test_pipeline import TINY
from test_train_cam import TINY_MODEL
from torch.utils.data import Dataset

import weaktr.cam.seeds
import weaktr.data.demo
import weaktr.data.torch_datasets
from weaktr.cli import main
from weaktr.crf import CRFParams
from weaktr.data import check, seed_labels
from weaktr.data.check import FileCheck, check_files
from weaktr.data.folder import prepare_folder
from weaktr.data.info import DatasetInfo
from weaktr.data.loader import ItemLoader
from weaktr.errors import InputError, ItemError
from weaktr.io import save_cams
from weaktr.stages import predict

BUG = "bits must be between or equal to 1 and 8"  # stands for any bug met on one image


def _bug_lines(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    """The error lines of a command that met a bug (exit 1), with no traceback on the console."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("weaktr ")]


class _Items(Dataset):
    """Four items; the third raises ``error``."""

    ids = ("a", "b", "c", "d")

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return len(self.ids)

    def item_name(self, index: int) -> str:
        return f"image {self.ids[index]}"

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 2:
            raise self.error
        return torch.tensor([index])


@pytest.mark.parametrize(("workers", "batch"), [(1, 2), (1, None), (0, 2)])
def test_item_loader_hands_over_the_error_of_the_item(workers: int, batch: int | None) -> None:
    with pytest.raises(ItemError) as bug:
        list(ItemLoader(_Items(ValueError(BUG)), batch_size=batch, num_workers=workers))
    assert (bug.value.item, bug.value.cause, bug.value.message) == ("image c", "ValueError", BUG)
    assert "__getitem__" in bug.value.traceback_text
    with pytest.raises(InputError) as bad:
        list(ItemLoader(_Items(InputError("not a readable image", "/data/c.png")), num_workers=workers))
    assert bad.value.lines() == ["/data/c.png: not a readable image"] and bad.value.item == "image c"
    with pytest.raises(InputError) as bad:
        list(ItemLoader(_Items(InputError("no labels")), batch_size=batch, num_workers=workers))
    assert bad.value.lines() == ["image c: no labels"]


def _dataset(root: Path, n: int = 8) -> DatasetInfo:
    make_folder(root, n=n, hw=(48, 48))
    return prepare_folder(root / "images", root / "labels.csv", root / "data", val_fraction=0)


def test_a_bug_in_a_dataloader_worker_is_one_line_with_the_traceback_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    info = _dataset(tmp_path)
    real = weaktr.data.torch_datasets.load_image

    def load_image(path: Path) -> np.ndarray:
        if Path(path).stem == "im3":
            raise ValueError(BUG)
        return real(path)

    monkeypatch.setattr(weaktr.data.torch_datasets, "load_image", load_image)  # the worker forks
    run = tmp_path / "run"
    argv = ["train-cam", "--config", "demo", "--run-dir", str(run), f"data.dataset={info.root}"]
    tiny = [TINY_MODEL, "device=cpu", "cam_model.num_classes=2", "cam_train.epochs=1"]
    tiny += ["cam_train.batch_size=4", "cam_train.img_size=48", "cam_train.num_workers=1"]
    tiny += ["cam_train.select_checkpoint=last"]
    log = run.resolve() / "log.txt"
    assert _bug_lines(capsys, [*argv, *tiny]) == [
        f"weaktr train-cam: error: image im3: ValueError: {BUG} (full traceback in {log}; "
        "WEAKTR_DEBUG=1 prints it)"
    ]
    text = log.read_text()
    assert f"error: image im3: ValueError: {BUG}" in text
    assert "where image im3 failed:\nTraceback (most recent call last):" in text
    assert "in load_image" in text  # the worker's own frames
    # the command closed its log: a later command of this process that opens no run does not name it
    assert not [h for h in logging.getLogger("weaktr").handlers if isinstance(h, logging.FileHandler)]


def _cams(root: Path, ids: list[str]) -> Path:
    for i in ids:
        save_cams(root / "cams" / f"{i}.npz", np.random.rand(1, 48, 48), [1])
    return root / "cams"


def test_a_bug_in_the_seed_process_pool_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    info = _dataset(tmp_path)
    cams = _cams(tmp_path, info.ids("train"))
    real = weaktr.cam.seeds.load_cams

    def load_cams(path: Path) -> tuple[np.ndarray, np.ndarray]:
        if Path(path).stem == "im2":
            raise ValueError(BUG)
        return real(path)

    monkeypatch.setattr(weaktr.cam.seeds, "load_cams", load_cams)  # the pool's workers fork
    run = tmp_path / "run"
    argv = ["make-seeds", "--config", "demo", "--run-dir", str(run), f"data.dataset={info.root}"]
    argv += ["--cams", str(cams), "--no-crf", "seeds.workers=2", "seeds.threshold_from=config"]
    log = run.resolve() / "log.txt"
    assert _bug_lines(capsys, [*argv, "device=cpu"]) == [
        f"weaktr make-seeds: error: image im2: ValueError: {BUG} (full traceback in {log}; "
        "WEAKTR_DEBUG=1 prints it)"
    ]
    assert "in load_cams" in log.read_text()


def test_a_bug_in_the_main_process_is_one_line_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    info = _dataset(tmp_path, n=4)
    cams = _cams(tmp_path, info.ids("train"))

    def make_seeds(*args: object, **kwargs: object) -> int:
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr("weaktr.stages.seeds.make_seeds", make_seeds)
    run = tmp_path / "run"
    argv = ["make-seeds", "--config", "demo", "--run-dir", str(run), f"data.dataset={info.root}"]
    log = run.resolve() / "log.txt"
    assert _bug_lines(capsys, [*argv, "--cams", str(cams), "--no-crf", "device=cpu"]) == [
        f"weaktr make-seeds: error: RuntimeError: a bug ... (full traceback in {log}; "
        "WEAKTR_DEBUG=1 prints it)"
    ]
    assert "a bug\nwith a second line" in log.read_text()


def _broken_crf(image: np.ndarray, scores: np.ndarray, params: CRFParams) -> np.ndarray:
    raise ValueError(BUG)


def test_a_bug_in_the_crf_process_pool_names_the_image(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(predict, "softmax_crf", _broken_crf)  # forked workers inherit it
    queue = predict._CRFQueue(2)
    job = (np.zeros((4, 4, 3), np.uint8), np.ones((1, 4, 4)), np.zeros(1, np.int64), CRFParams.voc_softmax())
    with pytest.raises(ItemError) as err:
        queue.submit((*job, tmp_path / "2008_000123.png", None))
        queue.close()
    assert str(err.value) == f"image 2008_000123: ValueError: {BUG}"
    assert "_broken_crf" in err.value.traceback_text


def test_a_bug_in_the_data_check_pool_names_the_file(tmp_path: Path, monkeypatch) -> None:
    ids = make_folder(tmp_path, n=64)  # enough files for the process pool
    real = check.load_image

    def load_image(path: Path) -> np.ndarray:
        if path.stem == "im40":
            raise ValueError(BUG)
        return real(path)

    monkeypatch.setattr(check, "load_image", load_image)
    items = [FileCheck(tmp_path / "images" / f"{i}.png") for i in ids]
    with pytest.raises(ItemError) as err:
        check_files(items, 3, workers=2)
    assert err.value.item == str(tmp_path / "images" / "im40.png") and err.value.message == BUG


def test_a_bug_in_the_seed_check_threads_names_the_image(tmp_path: Path, monkeypatch) -> None:
    info = _dataset(tmp_path, n=4)
    ids = info.ids("train")
    (tmp_path / "seeds").mkdir()
    for i in ids:
        Image.fromarray(np.ones((48, 48), np.uint8), "L").save(tmp_path / "seeds" / f"{i}.png")
    real = seed_labels.load_label_map

    def load_label_map(path: Path, *args: object) -> np.ndarray:
        if path.stem == "im1":
            raise ValueError(BUG)
        return real(path, *args)

    monkeypatch.setattr(seed_labels, "load_label_map", load_label_map)
    with pytest.raises(ItemError) as err:
        list(seed_labels.check_label_maps(info, ids, tmp_path / "seeds", 3))
    assert str(err.value) == f"image im1: ValueError: {BUG}"


_BROKEN_DEMO = """
import sys
import weaktr.data.demo as demo
real = demo.render_scene

def render_scene(seed, index, size, num_classes):
    if index == 3:
        raise ValueError("{bug}")
    return real(seed, index, size, num_classes)

demo.render_scene = render_scene  # the fork pool's workers inherit it
from weaktr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_bug_in_the_demo_fork_pool_is_one_line_from_a_real_process(tmp_path: Path) -> None:
    """Before the run's log exists (the demo data is made first), WEAKTR_DEBUG=1 is the way in."""
    script = textwrap.dedent(_BROKEN_DEMO.format(bug=BUG))
    argv = ["demo", "--run-dir", str(tmp_path / "run"), *TINY, "--until", "train_cam"]
    env = {k: v for k, v in os.environ.items() if k != "WEAKTR_DEBUG"}
    out = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert [ln for ln in out.stderr.splitlines() if ln.startswith("weaktr ")] == [
        f"weaktr demo: error: demo image 000003: ValueError: {BUG} (WEAKTR_DEBUG=1 prints the full traceback)"
    ]


def test_weaktr_debug_prints_the_workers_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = weaktr.data.demo.render_scene

    def render_scene(seed: int, index: int, size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        if index == 3:
            raise ValueError(BUG)
        return real(seed, index, size, num_classes)

    monkeypatch.setattr(weaktr.data.demo, "render_scene", render_scene)
    monkeypatch.setenv("WEAKTR_DEBUG", "1")
    assert main(["demo", "--run-dir", str(tmp_path / "run"), *TINY, "--until", "train_cam"]) == 1
    err = capsys.readouterr().err
    assert "where demo image 000003 failed:\nTraceback (most recent call last):" in err
    assert "in render_scene" in err
    assert err.splitlines()[-1] == (
        f"weaktr demo: error: demo image 000003: ValueError: {BUG} (full traceback above)"
    )
