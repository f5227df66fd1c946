"""Phase-1 stage functions and their commands (train-cam, gen-cam, make-seeds, evaluate) on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train_cam import TINY_MODEL

from weaktr.cli import main
from weaktr.config import load_config
from weaktr.crf import CRFParams
from weaktr.data.demo import generate_demo
from weaktr.errors import InputError
from weaktr.io import load_cams
from weaktr.runtime.context import RunContext, open_run
from weaktr.stages import seeds as seeds_module
from weaktr.stages.gen_cam import gen_cam_stage
from weaktr.stages.scoring import evaluate_stage, sweep_range
from weaktr.stages.seeds import seeds_stage


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A run directory whose CAM model was trained by ``weaktr train-cam``, and the config arguments."""
    root = tmp_path_factory.mktemp("phase1")
    generate_demo(root / "data", n_train=12, n_val=4, size=48, num_classes=3, seed=1)
    args = [
        "--config",
        "demo",
        "--run-dir",
        str(root / "run"),
        f"data.dataset={root / 'data' / 'dataset.yaml'}",
        "device=cpu",
        TINY_MODEL,
        "cam_train.epochs=1",
        "cam_train.batch_size=4",
        "cam_train.img_size=48",
        "cam_train.num_workers=0",
        "cam_gen.num_workers=0",
        "seeds.workers=1",
    ]
    assert main(["train-cam", *args]) == 0
    return root / "run", args


def _ctx(args: list[str], *extra: str) -> RunContext:
    """The run context of the fixture's command line, for calling the stage functions directly."""
    overrides = [*args[4:], f"run_dir={args[3]}", *extra]
    return open_run(load_config("demo", overrides))


def test_sweep_range_is_inclusive() -> None:
    assert sweep_range([0.40, 0.43]) == [0.40, 0.41, 0.42, 0.43]
    assert sweep_range([0.5, 0.5]) == [0.5]
    with pytest.raises(InputError, match="low <= high"):
        sweep_range([0.6, 0.4])


def test_commands_write_and_name_their_outputs(trained, capsys: pytest.CaptureFixture[str]) -> None:
    run, args = trained
    assert (run / "cam" / "model.safetensors").is_file()
    assert main(["gen-cam", *args]) == 0
    assert f"CAMs: {(run / 'cams').resolve()}" in capsys.readouterr().out
    ids = sorted(p.stem for p in (run / "cams").glob("*.npz"))
    assert len(ids) == 12
    cams, classes = load_cams(run / "cams" / f"{ids[0]}.npz")
    assert cams.shape[1:] == (48, 48) and cams.shape[0] == len(classes) and 0 <= cams.min() <= cams.max() <= 1
    assert main(["make-seeds", "--no-crf", *args]) == 0
    assert "seeds:" in capsys.readouterr().out
    assert main(["make-seeds", *args]) == 0  # the demo config has the CRF on
    for name in ("seeds", "seeds_crf"):
        seeds = sorted((run / name).glob("*.png"))
        assert len(seeds) == 12
        with Image.open(seeds[0]) as img:
            assert img.mode == "P" and img.size == (48, 48)  # the data set's VOC palette
            assert np.asarray(img).max() <= 3
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(run / "seeds_crf"), "--split", "train", *args]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "metrics:" in out
    metrics = json.loads((run / "metrics" / "seeds_crf.json").read_text())
    assert {"miou", "iou", "precision", "recall", "class_names", "split"} <= set(metrics)
    assert len(metrics["iou"]) == 4 and metrics["split"] == "train"
    assert main(["evaluate", "--pred", str(run / "cams"), "--cams", "--name", "cam_fine", *args]) == 0
    cam_metrics = json.loads((run / "metrics" / "cam_fine.json").read_text())
    assert 0.10 <= cam_metrics["threshold"] <= 0.90 and cam_metrics["sweep"]


def test_gen_cam_kind_split_and_out(trained) -> None:
    run, args = trained
    out = run / "coarse_val"
    assert main(["gen-cam", "--kind", "coarse", "--split", "val", "--out", str(out), *args]) == 0
    assert len(list(out.glob("*.npz"))) == 4
    ctx = _ctx(args)
    model = run / "cam" / "model.safetensors"
    fused = gen_cam_stage(ctx, model, split="val", kind="fused", out_dir=run / "fused_val")
    refined = gen_cam_stage(ctx, model, split="val", kind="refined", out_dir=run / "refined_val")
    default = gen_cam_stage(ctx, model, split="val", out_dir=run / "default_val")
    name = sorted(p.name for p in out.glob("*.npz"))[0]
    maps = {d.name: load_cams(d / name)[0] for d in (out, fused, refined, default)}
    np.testing.assert_array_equal(maps["default_val"], maps["refined_val"])  # the tiny model refines
    assert not np.array_equal(maps["coarse_val"], maps["fused_val"])
    assert not np.array_equal(maps["refined_val"], maps["fused_val"])
    # cam_gen.refine overrides the model's own choice for 'default'.
    forced = gen_cam_stage(_ctx(args, "cam_gen.refine=false"), model, "val", out_dir=run / "forced_val")
    np.testing.assert_array_equal(load_cams(forced / name)[0], maps["fused_val"])


def test_seeds_gt_sweep_records_threshold_and_evaluate_errors(trained) -> None:
    run, args = trained
    assert main(["gen-cam", *args]) == 0
    ctx = _ctx(args, "seeds.threshold_from=gt_sweep")
    out = seeds_stage(ctx, run / "cams", crf=False, out_dir=run / "seeds_swept")
    assert len(list(out.glob("*.png"))) == 12
    record = json.loads((run / "metrics" / "seed_threshold.json").read_text())
    assert record["from"] == "gt_sweep" and record["threshold"] in sweep_range([0.10, 0.90])
    scores = evaluate_stage(ctx, out, "train", "seeds_swept")
    assert 0.0 <= scores["miou"] <= 1.0 and (run / "metrics" / "seeds_swept.json").is_file()
    with pytest.raises(InputError, match="evaluate them with --cams"):
        evaluate_stage(ctx, run / "cams", "train", "wrong")


def test_seed_crf_params_override_the_preset(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    run, args = trained
    assert main(["gen-cam", *args]) == 0
    seen: list[CRFParams | None] = []
    monkeypatch.setattr(seeds_module, "make_seeds", lambda *a, **kw: seen.append(a[4]))
    ctx = _ctx(args, "seeds.crf_params={gauss_sxy: 1, bilateral_compat: 20}")
    seeds_stage(ctx, run / "cams", crf=True, out_dir=run / "seeds_kernels")
    assert seen == [CRFParams(1, 3, 83, 5, 20)]  # voc_label with two fields replaced


def test_bad_input_exits_2_naming_the_file(trained, capsys: pytest.CaptureFixture[str]) -> None:
    run, args = trained
    missing = run / "nope.safetensors"
    assert main(["gen-cam", "--checkpoint", str(missing), *args]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["train-cam", *args, "cam_train.epoch=3"]) == 2
    assert "cam_train.epoch" in capsys.readouterr().err
    assert main(["make-seeds", "--cams", str(run / "empty"), *args]) == 2
    assert str(run / "empty") in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(run / "absent"), *args]) == 2
    assert str(run / "absent") in capsys.readouterr().err
