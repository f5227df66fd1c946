"""Layered configuration on OmegaConf: defaults -> YAML (with include) -> key=value overrides, strict keys
and types, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from weaktr.config import (
    CamGenConfig,
    CRFOverrides,
    GCConfig,
    RunConfig,
    SegTrainConfig,
    load_config,
    packaged_configs,
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


def test_a_loaded_config_is_the_dataclasses_with_plain_values():
    cfg = load_config("demo")
    assert type(cfg) is RunConfig and type(cfg.seg_train) is SegTrainConfig
    assert type(cfg.seg_train.gc) is GCConfig and type(cfg.cam_gen) is CamGenConfig
    assert type(cfg.seeds.crf_params) is CRFOverrides
    assert type(cfg.cam_gen.scales) is list and type(cfg.cam_model) is dict and type(cfg.seg_model) is dict
    assert cfg.seeds.crf_params.set_values() == {
        "gauss_sxy": 1.0,
        "bilateral_sxy": 20.0,
        "bilateral_srgb": 20.0,
        "bilateral_compat": 20.0,
    }
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()  # no OmegaConf containers inside


@pytest.mark.parametrize("name", packaged_configs())
def test_packaged_configs_load_and_round_trip(name, tmp_path):
    cfg = load_config(name)
    assert cfg.name == name
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg  # a run repeated from its own config.yaml


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
    assert cfg.cam_train.lr == 1e-3 and isinstance(cfg.cam_train.lr, float)  # "1e-3" (no dot) is a float
    assert cfg.cam_gen.scales == [1.0, 1.2]
    assert cfg.cam_model["depth"] == 2 and cfg.cam_model["backbone"] == "deit_small_patch16_224"
    assert cfg.seeds.crf is False


def test_later_includes_win_and_the_file_wins_last(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nrun_dir: a\nseg_train: {epochs: 1, batch_size: 1}\n")
    (tmp_path / "b.yaml").write_text("name: b\nseg_train: {epochs: 2}\n")
    (tmp_path / "top.yaml").write_text("include: [a.yaml, b.yaml]\nname: top\ncam_gen: {scales: [2.0]}\n")
    cfg = load_config(tmp_path / "top.yaml")
    assert (cfg.name, cfg.run_dir) == ("top", "a")
    assert (cfg.seg_train.epochs, cfg.seg_train.batch_size) == (2, 1)
    assert cfg.cam_gen.scales == [2.0]  # a list is replaced, not merged
    (tmp_path / "c.yaml").write_text("include: voc\ncam_gen: {scales: [3.0]}\n")
    assert load_config(tmp_path / "c.yaml", ["cam_gen.scales=[4.0]"]).cam_gen.scales == [4.0]


def test_model_sections_keep_their_default_keys_and_take_new_ones(tmp_path):
    (tmp_path / "m.yaml").write_text(
        "cam_model: {depth: 3, num_classes: 5}\nseg_model: {decoder_dropout: 0.0}\n"
    )
    cfg = load_config(tmp_path / "m.yaml", ["seg_model.extra={a: [1, 2]}"])
    defaults = RunConfig()
    assert cfg.cam_model == {**defaults.cam_model, "depth": 3, "num_classes": 5}
    assert cfg.seg_model == {**defaults.seg_model, "decoder_dropout": 0.0, "extra": {"a": [1, 2]}}


def test_a_mapping_override_replaces_the_mapping_where_a_yaml_layer_merges(tmp_path):
    cfg = load_config(
        "demo",
        [
            "seeds.crf_params={bilateral_compat: 5}",
            "seg_train.gc={tau: 0.7}",
            "cam_model={backbone: deit_tiny_patch16_224, num_classes: 6}",
        ],
    )
    assert cfg.seeds.crf_params.set_values() == {"bilateral_compat": 5.0}  # the demo's kernels are gone
    assert cfg.seg_train.gc == GCConfig(tau=0.7)  # the schema's defaults, not the demo's cell 24
    assert cfg.cam_model == {"backbone": "deit_tiny_patch16_224", "num_classes": 6}
    assert cfg.predict.crf_params.bilateral_sxy == 20.0  # a section not overridden keeps the demo's
    (tmp_path / "k.yaml").write_text("include: demo\nseeds: {crf_params: {bilateral_compat: 5}}\n")
    assert load_config(tmp_path / "k.yaml").seeds.crf_params.set_values() == {
        "gauss_sxy": 1.0,
        "bilateral_sxy": 20.0,
        "bilateral_srgb": 20.0,
        "bilateral_compat": 5.0,
    }
    assert load_config() == RunConfig()  # the shared typed defaults were not changed on the way


def test_include_of_a_packaged_name(tmp_path):
    (tmp_path / "mine.yaml").write_text("include: coco\nseeds: {threshold: 0.5}\n")
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg.seeds.threshold == 0.5 and cfg.cam_model["num_classes"] == 90


def test_include_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(InputError, match=r"config include cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml$"):
        load_config(tmp_path / "a.yaml")


def _one_line_error(*args: Any) -> str:
    """The message of the InputError that ``load_config(*args)`` raises, checked to be one line."""
    with pytest.raises(InputError) as info:
        load_config(*args)
    message = str(info.value)
    assert "\n" not in message
    chained = info.value.__cause__ or (None if info.value.__suppress_context__ else info.value.__context__)
    assert chained is None  # Python would print no OmegaConf traceback under it
    return message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seg_train.epocs=10", "unknown config key 'seg_train.epocs'; did you mean 'seg_train.epochs'?"),
        ("seg_trian.epochs=5", "unknown config key 'seg_trian'; did you mean 'seg_train'?"),
        (
            "epochs=3",
            "unknown config key 'epochs'; valid keys here: name, run_dir, device, threads, amp_cpu, "
            "tensorboard, data, cam_train, cam_model, cam_gen, seeds, seg_train, seg_model, predict, report",
        ),
        ("seg_train.epochs=ten", "config key 'seg_train.epochs' must be an integer, got 'ten'"),
        ("seg_train.epochs=2.5", "config key 'seg_train.epochs' must be an integer, got 2.5"),
        ("seg_train.epochs='10'", "config key 'seg_train.epochs' must be an integer, got '10'"),
        ("predict.flip=1", "config key 'predict.flip' must be true or false, got 1"),
        ("cam_gen.refine=2", "config key 'cam_gen.refine' must be true or false, got 2"),
        ("data.train_split=2012", "config key 'data.train_split' must be a string, got 2012"),
        ("seg_train.lr=.inf", "config key 'seg_train.lr' must be a finite number, got inf"),
        ("seg_train.lr=nan", "config key 'seg_train.lr' must be a finite number, got 'nan'"),
        ("cam_gen.scales=[1.0,a]", "config key 'cam_gen.scales[1]' must be a finite number, got 'a'"),
        ("cam_gen.scales=1.0", "config key 'cam_gen.scales' must be a list, got 1.0"),
        ("cam_gen.scales={a: 1}", "config key 'cam_gen.scales' must be a list, got {'a': 1}"),
        ("seg_train.gc=3", "config key 'seg_train.gc' must be a mapping, got 3"),
        ("seg_train.gc=null", "config key 'seg_train.gc' must be a mapping, got None"),
        (
            "seg_train.gc={taux: 1}",
            "unknown config key 'seg_train.gc.taux'; did you mean 'seg_train.gc.tau'?",
        ),
        (
            "seg_train.gc={mode: x}",
            "config key 'seg_train.gc.mode' must be one of 'code', 'per_image', 'none', got 'x'",
        ),
        ("seg_train.epochs.x=1", "config key 'seg_train.epochs' must be an integer, got {'x': 1}"),
        ("cam_model=3", "config key 'cam_model' must be a mapping, got 3"),
        (
            "cam_train.select_checkpoint=best",
            "config key 'cam_train.select_checkpoint' must be one of 'last', 'gt_miou', got 'best'",
        ),
        ("device=gpu", "config key 'device' must be one of 'auto', 'cpu', 'cuda', got 'gpu'"),
        ("name=${nope}", "config key 'name': Interpolation key 'nope' not found"),
        ("cam_model.depth=???", "config key 'cam_model.depth' has no value ('???')"),
        ("novalue", "override 'novalue' is not of the form dotted.key=value"),
        ("=3", "override '=3' is not of the form dotted.key=value"),
        ("a..b=1", "override 'a..b=1' is not of the form dotted.key=value"),
        (
            "cam_gen.scales=[1.0,",
            "override 'cam_gen.scales=[1.0,': the value is not valid YAML "
            "(did not find expected node content at line 2, column 1)",
        ),
    ],
)
def test_bad_overrides_give_one_line_errors(override, message):
    assert _one_line_error("voc", [override]) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "cam_train: {warmup_epoch: 3}\n",
            "unknown config key 'cam_train.warmup_epoch'; "
            "did you mean 'cam_train.warmup_epochs', 'cam_train.warmup_lr'?",
        ),
        (
            "seeds:\n  crf_params: {bilateral_sigma: 3}\n",
            "unknown config key 'seeds.crf_params.bilateral_sigma'; "
            "did you mean 'seeds.crf_params.bilateral_srgb', 'seeds.crf_params.bilateral_sxy', "
            "'seeds.crf_params.bilateral_compat'?",
        ),
        ("seg_train:\n  epochs: ten\n", "config key 'seg_train.epochs' must be an integer, got 'ten'"),
        ("seeds: {crf_params: [1]}\n", "config key 'seeds.crf_params' must be a mapping, got [1]"),
        ("name: a\nname: b\n", "not valid YAML: found duplicate key name at line 2, column 1"),
        (
            "seg_train: {epochs: [1,\n",
            "not valid YAML: did not find expected node content at line 2, column 1",
        ),
        ("- 1\n- 2\n", "a config file must hold a mapping at the top level"),
        ("include: 3\n", "'include' must be a config name or path, or a list of them"),
    ],
)
def test_bad_yaml_files_give_one_line_errors_naming_the_file(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    assert _one_line_error(tmp_path / "bad.yaml") == f"{tmp_path / 'bad.yaml'}: {message}"


def test_an_error_in_an_included_file_names_that_file(tmp_path):
    (tmp_path / "base.yaml").write_text("seg_train: {epocs: 3}\n")
    (tmp_path / "exp.yaml").write_text("include: base.yaml\n")
    message = _one_line_error(tmp_path / "exp.yaml")
    assert (
        message
        == f"{tmp_path / 'base.yaml'}: unknown config key 'seg_train.epocs'; did you mean 'seg_train.epochs'?"
    )


def test_missing_files_and_names_are_reported(tmp_path):
    assert _one_line_error(tmp_path / "none.yaml") == f"{tmp_path / 'none.yaml'}: config file not found"
    assert _one_line_error("no_such_config") == (
        f"no packaged config named 'no_such_config'; available: {', '.join(packaged_configs())}"
    )


def test_values_are_converted_only_where_yaml_is_lossy(tmp_path):
    (tmp_path / "f.yaml").write_text("seg_train: {lr: 1e-4, min_lr: 2, gc: {tau: 1}}\npredict: {flip: yes}\n")
    cfg = load_config(tmp_path / "f.yaml", ["cam_train.lr=5e-5", "cam_gen.scales=[1, 2]"])
    assert cfg.seg_train.lr == 1e-4 and cfg.seg_train.min_lr == 2.0 and cfg.seg_train.gc.tau == 1.0
    assert cfg.cam_train.lr == 5e-5 and cfg.cam_gen.scales == [1.0, 2.0]
    floats = [
        cfg.seg_train.lr,
        cfg.seg_train.min_lr,
        cfg.seg_train.gc.tau,
        cfg.cam_train.lr,
        *cfg.cam_gen.scales,
    ]
    assert all(type(v) is float for v in floats)
    assert cfg.predict.flip is True  # YAML's own boolean
    assert load_config(None, ["cam_train.pretrained=null"]).cam_train.pretrained is None
    assert load_config(None, ["seg_train.lr='1e-4'"]).seg_train.lr == 1e-4  # PyYAML's string form


def test_interpolations_resolve_before_the_config_is_saved(tmp_path):
    cfg = load_config("demo", ["run_dir=runs/${name}_small"])
    assert cfg.run_dir == "runs/demo_small"
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["run_dir"] == "runs/demo_small"


def test_derived_values_are_read_in_one_place_and_survive_a_save(tmp_path):
    """data.cam_eval_split's None means train_split; cam_gen.refine's None means cam_model.refine
    (True when the model section leaves it out); neither is a key of the saved config."""
    voc = load_config("voc")
    assert (voc.data.cam_eval_split_or_train, voc.refine) == ("train", True)
    cfg = load_config(None, ["data.cam_eval_split=null", "cam_model.refine=false"])
    assert (cfg.data.cam_eval_split_or_train, cfg.refine) == ("train_aug", False)
    assert load_config(None, ["cam_model.refine=false", "cam_gen.refine=true"]).refine is True
    assert load_config("demo", ["cam_model={backbone: deit_small_patch16_224}"]).refine is True
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert (again.data.cam_eval_split_or_train, again.refine) == ("train_aug", False)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert "cam_eval_split_or_train" not in saved["data"] and "refine" not in saved


def test_saved_config_is_plain_yaml(tmp_path):
    cfg = load_config("demo", ["name='1e-3'", "report.gt_choices=['yes', '012', 'null']"])
    save_config(cfg, tmp_path / "c.yaml")
    data = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert _leaves(data) == _leaves(cfg.to_dict())  # strings that look like numbers stay strings
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_save_config_replaces_the_file_only_when_the_write_succeeds(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    save_config(RunConfig(), path)
    before = path.read_text()

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("weaktr.config.loading.OmegaConf.save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_config(load_config("demo"), path)
    assert path.read_text() == before and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("name", packaged_configs())
def test_packaged_model_sections_are_accepted_by_the_models(name):
    cam = pytest.importorskip("weaktr.models.cam")
    seg = pytest.importorskip("weaktr.models.segmenter")
    cfg = load_config(name)
    assert cam.CAMConfig.from_dict(cfg.cam_model).num_classes == cfg.cam_model["num_classes"]
    assert seg.SegConfig.from_dict(cfg.seg_model).n_cls == cfg.cam_model["num_classes"] + 1


def test_the_pseudo_mask_split_is_the_train_side_split_that_predict_relabels():
    """voc trains on train_aug and predicts [val, train]: its pseudo masks are train's; the demo's its
    training split; a config predicting no train-side split falls back to the training split."""
    assert load_config("voc").pseudo_mask_split == "train"
    assert load_config("voc").train_side_splits == ("train_aug", "train")
    assert load_config("demo").pseudo_mask_split == "train"
    assert load_config("voc", ["predict.splits=[val]"]).pseudo_mask_split == "train_aug"
