"""Layered configuration: defaults -> YAML (with include) -> key=value overrides, strict keys and types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from weaktr.config import (
    RunConfig,
    config_from_dict,
    load_config,
    packaged_configs,
    parse_override,
    save_config,
)
from weaktr.errors import InputError

# load_config(name).to_dict() of every packaged config (and of the defaults), captured from the
# hand-written loader before the move to OmegaConf: the loader may change, these values may not.
VALUES_FILE = Path(__file__).parent / "fixtures" / "packaged_config_values.json"
DEFAULTS = "(defaults)"
EXPECTED = json.loads(VALUES_FILE.read_text())


def _leaves(value: Any, key: str = "") -> dict[str, tuple[str, Any]]:
    """Dotted key -> (type name, value): 1 == 1.0 in Python, so the type is compared too."""
    if isinstance(value, dict) and value:
        children = [(f"{key}.{n}" if key else n, item) for n, item in value.items()]
    elif isinstance(value, list) and value:
        children = [(f"{key}[{i}]", item) for i, item in enumerate(value)]
    else:
        return {key: (type(value).__name__, value)}
    return {k: v for child_key, item in children for k, v in _leaves(item, child_key).items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_packaged_config_keeps_its_captured_values(name):
    cfg = load_config(None if name == DEFAULTS else name)
    assert _leaves(cfg.to_dict()) == _leaves(EXPECTED[name])


def test_captured_values_cover_every_packaged_config():
    assert set(packaged_configs()) == set(EXPECTED) - {DEFAULTS}


def test_defaults_are_the_documented_voc_run():
    cfg = load_config()
    assert cfg.cam_train.lr == 6e-4 and cfg.cam_train.batch_size == 64 and cfg.cam_train.epochs == 60
    assert cfg.seeds.threshold == 0.43
    assert cfg.seg_train.gc.tau == 1.2 and cfg.seg_train.gc.cell == 120
    assert cfg.predict.scales == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


@pytest.mark.parametrize("name", packaged_configs())
def test_packaged_configs_load_and_round_trip(name, tmp_path):
    cfg = load_config(name)
    assert cfg.name == name
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_packaged_set_is_complete():
    assert {"voc", "coco", "demo", "voc_vit_small", "voc_dinov2_small", "voc_eva02_small"} <= set(
        packaged_configs()
    )


def test_packaged_values_follow_the_spec():
    voc, coco, vit = load_config("voc"), load_config("coco"), load_config("voc_vit_small")
    assert coco.cam_train.lr == 2e-4 and coco.cam_model["num_classes"] == 90
    assert coco.cam_gen.scales == [1.0, 0.8, 1.2] and coco.seeds.threshold == 0.42
    assert coco.seeds.crf_preset == "coco" and coco.seg_model["n_cls"] == 91
    assert coco.cam_model["aaf_reduction"] == voc.cam_model["aaf_reduction"] == 8  # inherited from voc
    assert vit.seg_train.gc.tau == 1.0 and vit.seg_train.gc.cell == 120
    assert vit.seg_model["backbone"] == "vit_small_patch16_384.augreg_in21k_ft_in1k"
    for name in ("voc_dinov2_small", "voc_eva02_small"):
        assert load_config(name).seg_model["patch_size"] == 16
    demo = load_config("demo")
    assert demo.cam_train.pretrained is None and demo.cam_model["refine"] is False


def test_yaml_include_and_override_layering(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "run_dir: base_dir\nseg_train: {epochs: 7, gc: {tau: 0.9}}\ncam_model: {depth: 3}\n"
    )
    (tmp_path / "exp.yaml").write_text(
        "include: base.yaml\nseg_train: {batch_size: 8}\ncam_train: {lr: 1e-3}\n"
    )
    cfg = load_config(
        tmp_path / "exp.yaml",
        ["seg_train.epochs=5", "cam_gen.scales=[1.0,1.2]", "cam_model.depth=2", "seeds.crf=false"],
    )
    assert cfg.run_dir == "base_dir"  # from the included file
    assert cfg.seg_train.batch_size == 8 and cfg.seg_train.gc.tau == 0.9  # merged, not replaced
    assert cfg.seg_train.gc.cell == 120  # default kept
    assert cfg.seg_train.epochs == 5  # override beats both files
    assert cfg.cam_train.lr == 1e-3 and isinstance(cfg.cam_train.lr, float)  # YAML "1e-3" is a string
    assert cfg.cam_gen.scales == [1.0, 1.2]
    assert cfg.cam_model["depth"] == 2 and cfg.cam_model["backbone"] == "deit_small_patch16_224"
    assert cfg.seeds.crf is False


def test_include_of_a_packaged_name(tmp_path):
    (tmp_path / "mine.yaml").write_text("include: coco\nseeds: {threshold: 0.5}\n")
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg.seeds.threshold == 0.5 and cfg.cam_model["num_classes"] == 90


def test_include_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(InputError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_unknown_override_key_names_close_matches():
    with pytest.raises(InputError, match=r"'seg_train\.epoch'.*'seg_train\.epochs'"):
        load_config("voc", ["seg_train.epoch=5"])
    with pytest.raises(InputError, match=r"'seg_trian'.*'seg_train'"):
        load_config("voc", ["seg_trian.epochs=5"])


def test_unknown_yaml_key_is_rejected(tmp_path):
    (tmp_path / "bad.yaml").write_text("cam_train: {warmup_epoch: 3}\n")
    with pytest.raises(InputError, match=r"cam_train\.warmup_epoch.*cam_train\.warmup_epochs"):
        load_config(tmp_path / "bad.yaml")


def test_types_and_choices_are_checked():
    with pytest.raises(InputError, match="integer"):
        load_config(None, ["seg_train.epochs=many"])
    with pytest.raises(InputError, match="one of 'last', 'gt_miou'"):
        load_config(None, ["cam_train.select_checkpoint=best"])
    with pytest.raises(InputError, match="true or false"):
        load_config(None, ["predict.flip=1"])
    with pytest.raises(InputError, match="not a section"):
        load_config(None, ["seg_train.epochs.x=1"])
    assert load_config(None, ["cam_train.pretrained=null"]).cam_train.pretrained is None
    assert load_config(None, ["seg_train.lr=1"]).seg_train.lr == 1.0


def test_override_syntax():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("x=hello") == (["x"], "hello")
    for bad in ("novalue", "=3", "a..b=1"):
        with pytest.raises(InputError, match=r"dotted\.key=value"):
            parse_override(bad)


def test_unknown_config_name_lists_packaged_ones():
    with pytest.raises(InputError, match=r"available: .*voc"):
        load_config("no_such_config")


def test_saved_config_is_plain_yaml(tmp_path):
    save_config(RunConfig(), tmp_path / "c.yaml")
    data = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert data["seg_train"]["gc"]["tau"] == 1.2
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("name", packaged_configs())
def test_packaged_model_sections_are_accepted_by_the_models(name):
    cam = pytest.importorskip("weaktr.models.cam")
    seg = pytest.importorskip("weaktr.models.segmenter")
    cfg = load_config(name)
    assert cam.CAMConfig.from_dict(cfg.cam_model).num_classes == cfg.cam_model["num_classes"]
    assert seg.SegConfig.from_dict(cfg.seg_model).n_cls == cfg.cam_model["num_classes"] + 1
