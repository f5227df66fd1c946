"""``weaktr run`` / ``weaktr demo`` / ``weaktr ablate`` end to end on a tiny demo configuration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from weaktr.ablation import format_table, run_ablations
from weaktr.cli import COMMANDS, build_parser, main
from weaktr.config import load_config
from weaktr.data.demo import SHAPES
from weaktr.evaluation.lost_classes import class_pixels, lost_classes
from weaktr.pipeline import STAGE_NAMES, stages_to_redo
from weaktr.report.render import build_report

TINY = [
    "data.demo.n_train=24",
    "data.demo.n_val=6",
    "data.demo.size=48",
    "data.demo.num_classes=3",
    "cam_model.num_classes=3",
    "cam_model.img_size=48",
    "cam_model.embed_dim=32",
    "cam_model.depth=1",
    "cam_model.num_heads=2",
    "cam_model.aaf_reduction=1",
    "cam_train.epochs=1",
    "cam_train.batch_size=8",
    "cam_train.img_size=48",
    "cam_train.num_workers=0",
    "cam_gen.scales=[1.0]",
    "seeds.workers=1",
    "seg_model.n_cls=4",
    "seg_model.image_size=48",
    "seg_model.embed_dim=32",
    "seg_model.depth=1",
    "seg_model.num_heads=2",
    "seg_train.epochs=1",
    "seg_train.batch_size=8",
    "seg_train.crop=48",
    "seg_train.base_size=48",
    "seg_train.gc.cell=12",
    "seg_train.num_workers=0",
    "seg_train.eval_every=0",
    "predict.scales=[1.0]",
    "predict.window=48",
    "predict.stride=32",
    "predict.base_size=48",
    "predict.workers=1",
    "report.n_examples=2",
]


def test_every_command_is_registered():
    parser = build_parser()
    text = parser.format_help()
    for name in COMMANDS:
        assert name.replace("_", "-") in text


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--run-dir", str(run_dir), *TINY]) == 0
    return run_dir


def test_demo_writes_every_artefact(demo_run: Path):
    summary = json.loads((demo_run / "summary.json").read_text())
    for key in ("cam_coarse", "cam_fine", "seeds", "seeds_crf", "pseudo_masks", "segmenter"):
        assert 0.0 <= summary[key]["miou"] <= 1.0, key
    assert summary["seconds"] > 0
    assert set(summary["stage_seconds"]) == set(STAGE_NAMES)
    # findings only: the stages' paths (models, CAM folders, the report) stay in their markers
    assert not {"model", "cams", "report"} & set(summary)
    # the GT-free lost-class check compares the seeds with the train split's pseudo masks
    ids = (demo_run / "data" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    seeds, pred = (class_pixels(demo_run / d, ids, 4) for d in ("seeds_crf", "pred/train"))
    names = ["background", *SHAPES[:3]]
    assert summary["lost_classes"] == [names[c] for c in lost_classes(seeds, pred)]
    assert (demo_run / "report" / "index.html").is_file()
    views = json.loads((demo_run / "views" / "index.json").read_text())
    assert len(views["images"]) == 2  # report.n_examples
    assert 'src="cams.png"' in (demo_run / "report" / "index.html").read_text()
    assert (demo_run / "config.yaml").is_file()
    ids = (demo_run / "data" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert {p.stem for p in (demo_run / "pred" / "val").glob("*.png")} == set(ids)


def test_rerun_skips_complete_stages_and_force_redoes_one(demo_run: Path, tmp_path: Path, capsys):
    """--force redoes a stage and every stage that reads its outputs, even past --until: a segmenter
    trained on the old seeds, and its predictions, are not reported as results of the new ones."""
    run = tmp_path / "run"
    shutil.copytree(demo_run, run, symlinks=True)
    markers = {p.name: p.stat().st_mtime_ns for p in (run / "stages").glob("*.json")}
    assert main(["demo", "--run-dir", str(run), *TINY]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (run / "stages").glob("*.json")} == markers
    capsys.readouterr()
    assert main(["demo", "--run-dir", str(run), "--force", "seeds", "--until", "seeds", *TINY]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (run / "stages").glob("*.json")}
    assert after["seeds.json"] != markers["seeds.json"]
    for stage in ("train_cam", "gen_cam", "eval_cams", "views"):
        assert after[f"{stage}.json"] == markers[f"{stage}.json"], stage
    assert not {"train_seg.json", "predict.json", "report.json"} & set(after)
    assert not (run / "seg").exists() and not (run / "pred").exists()
    assert "segmenter (val)" not in capsys.readouterr().out
    assert stages_to_redo(["eval_cams"]) == ["eval_cams", "report"]
    assert stages_to_redo(["train_cam"]) == list(STAGE_NAMES)


def test_unknown_stage_and_key_fail_cleanly(demo_run: Path, capsys):
    assert main(["demo", "--run-dir", str(demo_run), "--force", "nope", *TINY]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert main(["run", "demo", "--run-dir", str(demo_run), "seg_train.epochz=3"]) == 2
    assert "seg_train.epochs" in capsys.readouterr().err


def test_ablation_reuses_phase1_for_decoder_variants(demo_run: Path, tmp_path: Path):
    out = tmp_path / "ablate"
    (out / "base").parent.mkdir(parents=True)
    (out / "base").symlink_to(demo_run, target_is_directory=True)
    rows = run_ablations("demo", out, TINY, only=["tau_0"])
    assert [r["variant"] for r in rows] == ["base", "tau_0"]
    assert (out / "tau_0" / "cam").is_symlink()
    assert not (out / "tau_0" / "metrics").is_symlink()
    assert "segmenter" in rows[1]
    assert "| tau_0 |" in format_table(rows)
    assert (out / "ablation.md").is_file()


def test_report_only_cam_variants_are_scored_on_a_stated_sample(demo_run: Path, tmp_path: Path, capsys):
    assert load_config("demo").report.cam_variant_images is None  # the demo's documented figures: all images
    assert load_config("voc").report.cam_variant_images == 300
    run = tmp_path / "run"
    shutil.copytree(demo_run, run, symlinks=True)
    args = ["demo", "--run-dir", str(run), "--force", "eval_cams", "--until", "eval_cams", *TINY]
    assert main([*args, "report.cam_variant_images=5"]) == 0
    n_train = len((run / "data" / "ImageSets" / "Segmentation" / "train.txt").read_text().split())
    assert len(list((run / "cams").glob("*.npz"))) == n_train  # the CAMs in use: every image
    for variant in ("coarse", "refined"):  # the demo uses the fused CAMs; refined is the other variant
        assert len(list((run / f"cams_{variant}").glob("*.npz"))) == 5
        metrics = json.loads((run / "metrics" / f"cam_{variant}.json").read_text())
        assert (metrics["images"], metrics["sampled_from"]) == (5, n_train)
    fine = json.loads((run / "metrics" / "cam_fine.json").read_text())
    assert fine["images"] == n_train and "sampled_from" not in fine
    assert f"cam_coarse (train, 5 of {n_train} images" in capsys.readouterr().out
    text = build_report(run).read_text()
    assert f'<td class="num">5 of {n_train}</td>' in text and f'<td class="num">{n_train}</td>' in text
    assert "cam_coarse, cam_refined only feed this report" in text
    assert main([*args, "report.cam_variant_images=0"]) == 2
    assert "report.cam_variant_images must be a positive number" in capsys.readouterr().err


def test_every_ablation_builds_its_models_on_the_demo_config():
    """A variant's overrides must fit the packaged demo (e.g. an AAF reduction must leave a hidden unit)."""
    from weaktr.ablation import variants
    from weaktr.models.cam import CAMConfig, build_cam_model

    base = load_config("demo")
    for v in variants(base.seg_train.gc.tau, base.seg_train.gc.cell):
        cfg = load_config("demo", list(v.overrides))
        model = build_cam_model(CAMConfig.from_dict(dict(cfg.cam_model)))
        assert model.aaf.fusion == cfg.cam_model.get("fusion", "aaf"), v.name
