"""The AAF check after CAM training: its statistic, its verdict, the restart and its resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_cam import tiny_config

from weaktr.data.demo import generate_demo
from weaktr.data.images import load_image
from weaktr.errors import InputError
from weaktr.io import load_checkpoint
from weaktr.models.cam import load_cam_model
from weaktr.models.timm_factory import normalisation, normalise
from weaktr.pipeline import format_summary, run_pipeline
from weaktr.runtime.context import open_run
from weaktr.stages import aaf_check
from weaktr.stages.aaf_check import RESTART_SEED_STRIDE, mean_map_weights, read_checks
from weaktr.stages.train_cam import CamTrainer, train_cam

SATURATED = ("cam_train.aaf_saturated=0.01", "cam_train.restarts=1")  # every AAF counts as saturated


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train + 4 val generated images of 48 px with 3 classes."""
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, n_train=16, n_val=4, size=48, n_classes=3, seed=0)
    return root / "dataset.yaml"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0]


def _same(a: Path, b: Path) -> bool:
    x, y = _weights(a), _weights(b)
    return set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mean_map_weights_average_the_aaf_weights_of_each_image(tiny_data: Path, tmp_path: Path) -> None:
    ctx = open_run(tiny_config(tiny_data, tmp_path, "cam_train.epochs=1", "cam_train.aaf_check_images=3"))
    model = load_cam_model(train_cam(ctx))
    paths = [ctx.dataset.image_path(i) for i in ctx.dataset.ids("train")[:3]]
    got = mean_map_weights(model, paths, torch.device("cpu"))
    mean, std = normalisation(model.config.backbone)
    with torch.no_grad():
        each = [model(normalise(load_image(p), mean, std)[None]).aaf_weights[0] for p in paths]
    np.testing.assert_allclose(got, torch.stack(each).double().mean(0).numpy(), rtol=1e-6)
    assert got.shape == (model.config.depth * model.config.num_heads,)
    # the verdict of the run above, one record: not restarted
    (check,) = read_checks(ctx.layout)
    assert check.attempt == 0 and check.seed == 504 and check.images == 3 and not check.restarted
    np.testing.assert_allclose(check.weights, got, atol=1e-6)
    model.config.fusion = "mean"
    assert mean_map_weights(model, paths, torch.device("cpu")) is None


def test_a_saturated_aaf_trains_again_from_a_new_seed(
    tiny_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = train_cam(open_run(tiny_config(tiny_data, tmp_path, *SATURATED)))
    cam, old = tmp_path / "cam", tmp_path / "cam" / "attempt-0"
    assert sorted(p.name for p in old.iterdir()) == [
        "log.jsonl",
        "model.safetensors",
        "selection.json",
        "state.safetensors",
    ]
    assert path == cam / "model.safetensors" and not _same(path, old / "model.safetensors")
    first, second = read_checks(open_run(tiny_config(tiny_data, tmp_path)).layout)
    assert (first.attempt, first.seed, first.restarted) == (0, 504, True)
    assert (second.attempt, second.seed, second.restarted) == (1, 504 + RESTART_SEED_STRIDE, False)
    assert _records(cam / "log.jsonl")[0]["seed"] == 504 + RESTART_SEED_STRIDE
    assert _records(old / "log.jsonl")[0]["seed"] == 504
    warnings = [line for line in capsys.readouterr().err.splitlines() if "smallest mean AAF" in line]
    assert len(warnings) == 2
    assert "training again from seed 1000504 (restart 1 of 1)" in warnings[0]
    assert "attempt 2, seed 1000504" in warnings[1] and "the CAMs may be weak" in warnings[1]
    # finished and judged: a rerun neither trains nor judges again
    before = (cam / "model.safetensors").stat().st_mtime_ns, (cam / "aaf_check.json").read_text()
    train_cam(open_run(tiny_config(tiny_data, tmp_path, *SATURATED)))
    assert ((cam / "model.safetensors").stat().st_mtime_ns, (cam / "aaf_check.json").read_text()) == before


def test_an_aaf_below_the_threshold_keeps_the_first_network(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, tmp_path, "cam_train.aaf_saturated=1.0", "cam_train.restarts=1")
    train_cam(open_run(cfg))
    (check,) = read_checks(open_run(tiny_config(tiny_data, tmp_path)).layout)
    assert not check.restarted and check.smallest < 1.0
    assert not (tmp_path / "cam" / "attempt-0").exists()


class KilledError(Exception):
    """Stands for a kill -9 at a chosen line."""


def test_a_kill_around_the_restart_resumes_to_the_same_network(
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    straight = tmp_path / "straight"
    train_cam(open_run(tiny_config(tiny_data, straight, *SATURATED)))
    final, checks = straight / "cam" / "model.safetensors", (straight / "cam" / "aaf_check.json").read_text()

    # killed after the attempt's files moved aside, before its verdict was written
    run = tmp_path / "between"
    real_write = aaf_check._write_checks

    def killed_write(*args: object) -> None:
        raise KilledError

    monkeypatch.setattr(aaf_check, "_write_checks", killed_write)
    with pytest.raises(KilledError):
        train_cam(open_run(tiny_config(tiny_data, run, *SATURATED)))
    assert (run / "cam" / "attempt-0" / "state.safetensors").is_file()
    assert not (run / "cam" / "state.safetensors").exists()
    monkeypatch.setattr(aaf_check, "_write_checks", real_write)
    train_cam(open_run(tiny_config(tiny_data, run, *SATURATED)))
    assert _same(run / "cam" / "model.safetensors", final)
    assert (run / "cam" / "aaf_check.json").read_text() == checks

    # killed in the middle of the state move: the state is gone, the model is still in place
    run = tmp_path / "moving"
    real_replace = aaf_check.os.replace
    moved: list[str] = []

    def killed_replace(src: Path, dst: Path) -> None:  # os.replace is every module's: retire's only
        if "attempt-0" in str(dst):
            if moved:
                raise KilledError
            moved.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(aaf_check.os, "replace", killed_replace)
    with pytest.raises(KilledError):
        train_cam(open_run(tiny_config(tiny_data, run, *SATURATED)))
    monkeypatch.setattr(aaf_check.os, "replace", real_replace)
    assert moved == ["state.safetensors"] and (run / "cam" / "model.safetensors").is_file()
    train_cam(open_run(tiny_config(tiny_data, run, *SATURATED)))
    assert _same(run / "cam" / "model.safetensors", final)
    assert (run / "cam" / "aaf_check.json").read_text() == checks

    # killed in the second epoch of the second attempt
    run = tmp_path / "second"
    real_epoch = CamTrainer.train_epoch

    def killed_epoch(self: CamTrainer, epoch: int, loader: object) -> dict:
        if self.seed != 504 and epoch == 1:
            raise KilledError
        return real_epoch(self, epoch, loader)

    monkeypatch.setattr(CamTrainer, "train_epoch", killed_epoch)
    with pytest.raises(KilledError):
        train_cam(open_run(tiny_config(tiny_data, run, *SATURATED)))
    monkeypatch.setattr(CamTrainer, "train_epoch", real_epoch)
    assert [c.restarted for c in read_checks(open_run(tiny_config(tiny_data, run)).layout)] == [True]
    train_cam(open_run(tiny_config(tiny_data, run, *SATURATED)))
    assert _same(run / "cam" / "model.safetensors", final)
    assert (run / "cam" / "aaf_check.json").read_text() == checks
    assert [r["event"] for r in _records(run / "cam" / "log.jsonl")].count("resume") == 1


def test_settings_that_mean_nothing_are_refused(tiny_data: Path, tmp_path: Path) -> None:
    for overrides, pattern in (
        (("cam_train.restarts=-1",), r"must be 0 or more"),
        (("cam_train.aaf_saturated=0",), r"aaf_saturated must lie in \(0, 1\]"),
        (("cam_train.restarts=1", "cam_train.aaf_check_images=0"), r"restarts needs the AAF check"),
    ):
        with pytest.raises(InputError, match=pattern):
            train_cam(open_run(tiny_config(tiny_data, tmp_path, *overrides)))
    assert not (tmp_path / "cam").exists()


def test_the_summary_names_a_restart(tiny_data: Path, tmp_path: Path) -> None:
    summary = run_pipeline(open_run(tiny_config(tiny_data, tmp_path, *SATURATED)), until="train_cam")
    check = summary["aaf_check"]
    assert check["attempts"] == 2 and check["seed"] == 504 + RESTART_SEED_STRIDE and check["saturated"]
    assert json.loads((tmp_path / "summary.json").read_text())["aaf_check"] == check
    assert "CAM network trained 2x (AAF check; kept seed 1000504" in format_summary(summary)
    first_was_fine = {**summary, "aaf_check": {**check, "attempts": 1, "saturated": False}}
    assert "CAM network" not in format_summary(first_was_fine)
