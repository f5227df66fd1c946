"""The HTML report on a tiny but real run directory: figures exist, the page links them, gaps are named."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CAM
from PIL import Image

from weaktr.cli import main
from weaktr.config import load_config, save_config
from weaktr.data.demo import generate_demo
from weaktr.data.images import load_label_map
from weaktr.data.palette import voc_palette
from weaktr.evaluation.metrics import ConfusionMatrix, save_json
from weaktr.io import save_label_png, write_json
from weaktr.models.cam import CAMConfig, build_cam_model, save_cam_model
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import DistInfo
from weaktr.runtime.logging import JsonlLogger
from weaktr.stages.views import cam_views, views_stage

pytest.importorskip("matplotlib")

from weaktr.report.curves import log_panels
from weaktr.report.render import build_report

N_CLASSES = 3
STAGES = ("cam_coarse", "cam_fine", "seeds", "seeds_crf", "pseudo_masks", "segmenter")


def _perturb(mask: np.ndarray, shift: int) -> np.ndarray:
    """A plausible wrong label map: the GT shifted right by ``shift`` pixels."""
    return np.roll(mask, shift, axis=1)


def make_tiny_run(run_dir: Path) -> Path:
    """A run directory with every artefact the report reads, made by the real writers."""
    cfg = load_config(
        "demo",
        [
            f"run_dir={run_dir}",
            "data.demo={n_train: 6, n_val: 4, size: 64, num_classes: 3, seed: 0}",
            f"cam_model.num_classes={N_CLASSES}",
            f"seg_model.n_cls={N_CLASSES + 1}",
            "report.n_examples=3",
        ],
    )
    save_config(cfg, run_dir / "config.yaml")
    info = generate_demo(run_dir / "data", 6, 4, 64, N_CLASSES, 0)
    torch.manual_seed(0)
    model = build_cam_model(
        CAMConfig(
            backbone="vit_small_patch16_224",
            num_classes=N_CLASSES,
            img_size=64,
            stem="conv",
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=4,
            aaf_reduction=4,
            refine=False,
        )
    )
    save_cam_model(run_dir / "cam" / "model.safetensors", model)
    views_stage(RunContext(cfg, run_dir, info, DistInfo(0, 1, 0, torch.device("cpu"), True)))
    outputs = {"seeds": ("train", 6), "seeds_crf": ("train", 3), "pred/train": ("train", 2)}
    outputs |= {"pred/val": ("val", 1), "pred/val_nocrf": ("val", 4)}
    cms = {}
    for folder, (split, shift) in outputs.items():
        cm = ConfusionMatrix(N_CLASSES + 1)
        for i in info.ids(split):
            gt = load_label_map(info.mask_path(i))
            pred = _perturb(gt, shift)
            save_label_png(run_dir / folder / f"{i}.png", pred, voc_palette())
            cm.update(pred, gt)
        cms[folder] = cm
    sources = {
        "cam_coarse": "seeds",
        "cam_fine": "seeds",
        "seeds": "seeds",
        "seeds_crf": "seeds_crf",
        "pseudo_masks": "pred/train",
        "segmenter": "pred/val",
    }
    summary: dict = {}
    for stage, folder in sources.items():
        scores = cms[folder].scores()
        save_json(run_dir / "metrics" / f"{stage}.json", scores, info.class_names, {"split": "x"})
        summary[stage] = {"miou": scores["miou"], "mean_precision": scores["mean_precision"]}
    summary["cam_coarse"]["threshold"] = 0.4
    summary |= {"seconds": 321.5, "stage_seconds": {"train_cam": 100.0, "train_seg": 221.5}}
    write_json(run_dir / "summary.json", summary)
    with JsonlLogger(run_dir / "cam" / "log.jsonl") as log:  # the trainers' record layout
        log.log(event="start", epoch=0, epochs=3, batch_size=4, lr=1e-3)
        for step in range(1, 61):
            losses = {"cls": 0.7 / step**0.3, "coarse": 0.6 / step**0.2, "fine": 0.69}
            lr = 1e-3 * min(1.0, step / 20)
            log.log(event="iter", epoch=1 + (step - 1) // 20, iter=step, step=step, lr=lr, **losses)
            if step % 20 == 0:
                log.log(event="epoch", epoch=step // 20, lr=lr, seconds=10.0 + step / 20, iters=20, **losses)
                log.log(event="select", epoch=step // 20, miou=0.2 + step / 200, threshold=0.4)
    with JsonlLogger(run_dir / "seg" / "log.jsonl") as log:
        for it in range(4, 41, 4):
            log.log(
                event="iter",
                epoch=1 + (it - 1) // 10,
                iter=it,
                lr=0.01 * (1 - it / 41) ** 0.9,
                loss=1.0 / it,
                clipped_fraction=it / 40,
                kept_precision=None,
            )
            if it % 10 == 0:
                log.log(event="epoch", epoch=it // 10, loss=1.0 / it, val_miou=0.5 + it / 100)
        (run_dir / "seg" / "log.jsonl").open("a").write('{"event": "iter", "loss"')  # a torn last line
    return run_dir


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    return make_tiny_run(tmp_path / "run")


def _linked_images(index: Path) -> list[str]:
    return re.findall(r'<img class="fig" src="([^"]+)"', index.read_text())


def test_report_links_every_figure_and_shows_every_section(tiny_run: Path) -> None:
    index = build_report(tiny_run)
    assert index == tiny_run / "report" / "index.html"
    text = index.read_text()
    linked = _linked_images(index)
    assert set(linked) == {
        "iou.png",
        "cams.png",
        "aaf.png",
        "examples.png",
        "data.png",
        "curves_cam.png",
        "curves_seg.png",
    }
    for name in linked:
        with Image.open(index.parent / name) as img:
            assert img.format == "PNG" and min(img.size) > 50
    assert sorted(p.name for p in index.parent.glob("*.png")) == sorted(linked)
    assert not list(index.parent.glob(".*tmp*"))  # atomic writes leave no temporaries
    for key in STAGES:
        assert f"<td>{key}</td>" in text
    assert "Not in this run directory" not in text
    assert "seed threshold" in text and "5m22s" in text
    assert "declared in the config: seeds.threshold (0.35)" in text  # the demo config's GT-based choices
    assert "num_classes: 3" in text  # the config


def test_report_of_a_partial_run_names_what_is_absent(tiny_run: Path) -> None:
    build_report(tiny_run, n_examples=1)
    for rel in ("seeds", "seg", "pred", "summary.json"):
        path = tiny_run / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    index = build_report(tiny_run, n_examples=1)
    text = index.read_text()
    assert "Not in this run directory" in text
    for absent in ("summary.json", "seeds/", "seg/log.jsonl", "pred/val/"):
        assert absent in text
    assert set(_linked_images(index)) == {"iou.png", "cams.png", "aaf.png", "data.png", "curves_cam.png"}
    assert not (index.parent / "examples.png").exists()  # stale figures of the first build are gone


def test_report_survives_damaged_views_and_a_missing_image(tiny_run: Path) -> None:
    (tiny_run / "views" / "index.json").write_text('{"split": "train", "images": [')
    (tiny_run / "data" / "JPEGImages" / "000000.jpg").unlink()
    index = build_report(tiny_run, n_examples=1)
    assert "a readable views/index.json" in index.read_text()
    assert "cams.png" not in _linked_images(index) and "data.png" in _linked_images(index)


def test_report_without_config_or_cam_model(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    text = build_report(run).read_text()
    assert "config.yaml" in text and "summary.json" in text
    assert _linked_images(run / "report" / "index.html") == []


def test_cam_views_are_normalised_and_query_is_fine_cam_argmax() -> None:
    torch.manual_seed(0)
    cfg = CAMConfig(**{**TINY_CAM, "num_classes": 2})
    model = build_cam_model(cfg).eval()
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    v = cam_views(model, image, 2, torch.device("cpu"))
    for m in (v.coarse, v.cross, v.patch, v.fine, v.fused):
        assert m.shape == (40, 56) and m.min() >= 0 and m.max() <= 1 + 1e-6
    y, x = v.query
    assert 0 < y < 40 and 0 < x < 56
    assert v.aaf.shape == (cfg.depth * cfg.num_heads,)  # one AAF weight per attention map


def test_log_panels_group_events_and_skip_repeats_and_constants() -> None:
    records = [
        {"event": "iter", "step": s, "epoch": 1, "loss.cls": 1.0 / s, "loss.fine": 2.0 / s, "lr": 0.1 * s}
        for s in range(1, 5)
    ]
    records += [
        {"event": "epoch", "epoch": e, "loss.cls": 0.5, "val_miou": 0.5 + e, "iters": 4} for e in (1, 2)
    ]
    records.append({"event": "start", "epoch": 0, "batch_size": 8, "note": "text"})
    panels = {p.title: p for p in log_panels(records)}
    assert list(panels) == ["losses · iter", "learning rate · iter", "val_miou · epoch"]
    assert set(panels["losses · iter"].series) == {"loss.cls", "loss.fine"}
    assert panels["losses · iter"].xlabel == "step" and panels["learning rate · iter"].log_y
    assert panels["val_miou · epoch"].series["val_miou"] == ([1.0, 2.0], [1.5, 2.5])
    restart = [{"iter": i, "x": float(i)} for i in (1, 2, 1, 2)]  # a counter that restarts
    (panel,) = log_panels(restart)
    assert panel.xlabel == "log line" and panel.series["x"][0] == [0.0, 1.0, 2.0, 3.0]


def test_report_command(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tiny_run), "--examples", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(tiny_run / "report" / "index.html")
    assert main(["report", str(tiny_run / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope: run directory not found" in err[0]
    assert json.loads((tiny_run / "summary.json").read_text())["seconds"] == 321.5


def test_report_reads_artefacts_only_and_never_builds_a_model(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the report built or loaded a model")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    for loader in ("weaktr.models.cam.load_cam_model", "weaktr.models.segmenter.load_segmenter"):
        monkeypatch.setattr(loader, refuse)
    assert main(["report", str(tiny_run), "--examples", "2"]) == 0
    index = Path(capsys.readouterr().out.strip())
    assert {"cams.png", "aaf.png"} <= set(_linked_images(index))
    assert "Not in this run directory" not in index.read_text()


def test_report_of_a_run_without_views_says_so(tiny_run: Path) -> None:
    shutil.rmtree(tiny_run / "views")  # a run made before the views stage existed
    index = build_report(tiny_run, n_examples=1)
    text = index.read_text()
    assert "views/index.json (CAM and attention views" in text and "no CAM figure, no AAF weights" in text
    assert not {"cams.png", "aaf.png"} & set(_linked_images(index))


def test_a_damaged_view_file_leaves_its_row_out(tiny_run: Path) -> None:
    index_json = json.loads((tiny_run / "views" / "index.json").read_text())
    first, *rest = [e["id"] for e in index_json["images"]]
    (tiny_run / "views" / f"{first}.npz").write_bytes(b"torn")
    text = build_report(tiny_run).read_text()
    assert f"a readable views/{first}.npz" in text and "its row is left out" in text
    assert f"averaged over the {len(rest)} images above" in text
