"""Layered run configuration: package defaults -> a YAML file (with ``include:``) -> ``key=value``.

The dataclass defaults are the authors' documented PASCAL VOC run (spec §1.5, §1.6, §2.3-2.5), so a
YAML file only states what differs. Every stage reads one typed section; the merged result is saved
beside the outputs (:func:`save_config`) so a run can always be repeated from its own directory.

Model sections are free dictionaries handed to the model's own ``from_dict``, which validates them:
``cam_model`` -> ``weaktr.models.cam.CAMConfig``, ``seg_model`` -> ``weaktr.models.segmenter.SegConfig``.
The model code, not this file, owns the architecture keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from weaktr.errors import InputError
from weaktr.io import atomic_write

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

INCLUDE_KEY = "include"


@dataclass
class DemoDataConfig:
    """Size of the generated demo data set (used when ``data.dataset`` is ``demo``)."""

    n_train: int = 2000
    n_val: int = 300
    size: int = 96
    n_classes: int = 6
    seed: int = 0


@dataclass
class DataConfig:
    """Which prepared data set to use and which of its splits play which role.

    ``dataset`` is the path to a prepared ``dataset.yaml`` or the word ``demo`` (the built-in data set,
    generated into the run directory). Split names must exist in that ``dataset.yaml``.
    """

    dataset: str = "data/voc/dataset.yaml"
    train_split: str = "train_aug"  # image-level training; CAMs, seeds and pseudo masks are made for it
    val_split: str = "val"
    # split with pixel GT on which CAMs and seeds are scored (VOC: train, 1 464 images); None = train_split
    cam_eval_split: str | None = "train"
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)


@dataclass
class CamTrainConfig:
    """Phase-1 training (spec §1.5). ``batch_size`` is the total over all ranks."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 6e-4  # base lr; the optimiser uses lr * batch_size / 512 (see engine.optim.scaled_lr)
    weight_decay: float = 0.03
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    img_size: int = 224  # training crop; the model's own img_size sets its position embedding
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    randaug: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    seed: int = 504
    amp: bool = True  # bf16 autocast on CUDA (the authors trained with AMP)
    num_workers: int = 4
    pretrained: str | None = "hub"  # 'hub', a local weights file, or null (from scratch)
    # 'gt_miou' = the authors' choice: the epoch whose CAMs score best against pixel GT of
    # data.cam_eval_split (threshold swept over seeds.sweep); 'last' uses no pixel GT at all.
    select_checkpoint: Literal["last", "gt_miou"] = "last"
    log_every: int = 20  # iterations between JSONL log lines


@dataclass
class CamGenConfig:
    """Multi-scale + flip CAM generation (spec §1.6)."""

    scales: list[float] = field(default_factory=lambda: [1.0, 1.2])
    flip: bool = True
    refine: bool | None = None  # patch-attention refinement; None = the model's own cam_model.refine
    amp: bool = True
    num_workers: int = 4


@dataclass
class CRFOverrides:
    """Values replacing the preset's (None keeps it). The presets suit VOC/COCO photos of ~500 px; the
    pairwise kernels are in pixels and colour levels, so much smaller or flatter images want others."""

    gauss_sxy: float | None = None
    gauss_compat: float | None = None
    bilateral_sxy: float | None = None
    bilateral_srgb: float | None = None
    bilateral_compat: float | None = None
    iterations: int | None = None
    gt_prob: float | None = None  # label CRF only

    def set_values(self) -> dict[str, Any]:
        """The overridden values only, as keywords for :meth:`weaktr.crf.CRFParams.preset`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class SeedConfig:
    """Background threshold + label CRF turning CAMs into seed label maps (spec §1.6)."""

    threshold: float = 0.43
    # 'gt_sweep' picks the threshold with pixel GT of data.cam_eval_split (the authors' practice)
    threshold_from: Literal["config", "gt_sweep"] = "config"
    sweep: list[float] = field(default_factory=lambda: [0.30, 0.59])  # inclusive range, step 0.01
    crf: bool = True
    crf_preset: Literal["voc", "coco"] = "voc"
    crf_params: CRFOverrides = field(default_factory=CRFOverrides)
    workers: int = 0  # CRF processes; 0 = all cores


@dataclass
class GCConfig:
    """Gradient-clipping loss (spec §2.3): ``code`` = the authors' batch-mean form."""

    mode: Literal["code", "per_image", "none"] = "code"
    tau: float = 1.2
    cell: int = 120


@dataclass
class SegTrainConfig:
    """Phase-2 online retraining (spec §2.4). ``batch_size`` is the total over all ranks."""

    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-4
    encoder_lr_scale: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    min_lr: float = 1e-5
    power: float = 0.9
    crop: int = 480
    base_size: int = 520
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75
    gc: GCConfig = field(default_factory=GCConfig)
    eval_every: int = 1  # epochs between single-scale val evaluations (0 = never)
    eval_split: str | None = None  # None = data.val_split (COCO: val_5000)
    seed: int = 0
    amp: bool = False  # the authors trained phase 2 in float32
    num_workers: int = 4
    pretrained: str | None = "hub"
    # 'gt_val' keeps the epoch with the best val mIoU (GT-based); the authors' docs evaluate the last
    select_checkpoint: Literal["last", "gt_val"] = "last"
    log_every: int = 50


@dataclass
class PredictConfig:
    """Multi-scale + flip sliding-window inference, ensemble and softmax CRF (spec §2.5, §2.6)."""

    scales: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    flip: bool = True
    window: int = 480
    stride: int = 320
    base_size: int = 520
    window_batch: int = 4
    ensemble_weight: float = 0.8  # weight of the decoder-layer-1 output; 0 = off
    crf: bool = True
    crf_preset: Literal["voc", "coco"] = "voc"
    crf_params: CRFOverrides = field(default_factory=CRFOverrides)
    workers: int = 0  # CRF processes; 0 = all cores
    amp: bool = False
    splits: list[str] = field(default_factory=lambda: ["val", "train"])


@dataclass
class ReportConfig:
    """The HTML report at the end of a run."""

    enabled: bool = True
    n_examples: int = 8  # images shown with their CAM, seed, prediction and GT
    split: str = "val"
    # choices the config's author made beforehand by looking at pixel labels; the report lists them
    gt_choices: list[str] = field(default_factory=list)
    # images of the GT split on which the report-only CAM variants (coarse, the other refine variant)
    # are generated and scored: an evenly spread sample, so scoring costs the same on any data set;
    # null = the whole split
    cam_variant_images: int | None = 300


def _default_cam_model() -> dict[str, Any]:
    return {
        "backbone": "deit_small_patch16_224",
        "num_classes": 20,
        "img_size": 224,
        "drop_path": 0.1,
        "aaf_pool": "max",
        "aaf_reduction": 8,
        "aaf_feat_reduction": 8,
        "refine": True,
    }


def _default_seg_model() -> dict[str, Any]:
    return {
        "backbone": "deit_small_patch16_224",
        "n_cls": 21,
        "image_size": 480,
        "drop_path": 0.1,
    }


@dataclass
class RunConfig:
    """Everything one ``weaktr run`` needs; each stage reads its own section."""

    name: str = "voc"
    run_dir: str = "runs/voc"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    amp_cpu: bool = False  # allow bf16 autocast on CPU too (normally AMP is a CUDA speed option)
    data: DataConfig = field(default_factory=DataConfig)
    cam_train: CamTrainConfig = field(default_factory=CamTrainConfig)
    cam_model: dict[str, Any] = field(default_factory=_default_cam_model)
    cam_gen: CamGenConfig = field(default_factory=CamGenConfig)
    seeds: SeedConfig = field(default_factory=SeedConfig)
    seg_train: SegTrainConfig = field(default_factory=SegTrainConfig)
    seg_model: dict[str, Any] = field(default_factory=_default_seg_model)
    predict: PredictConfig = field(default_factory=PredictConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-ready)."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------
# dict -> dataclass with type checks


def _unknown_key(key: str, valid: list[str], prefix: str) -> InputError:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = (
        f"did you mean {', '.join(repr(prefix + c) for c in close)}?"
        if close
        else f"valid keys here: {', '.join(valid)}"
    )
    return InputError(f"unknown config key {prefix + key!r}; {hint}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``hint``; convert only where YAML is lossy (1e-4, int→float)."""
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise InputError(f"config key {key!r} must be a mapping, got {value!r}")
        return _build(hint, value, key + ".")
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(repr(c) for c in get_args(hint))
            raise InputError(f"config key {key!r} must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        (inner,) = get_args(hint)
        items = value if isinstance(value, list | tuple) else [value]
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(items)]
    if origin is dict or hint is Any:
        if origin is dict and not isinstance(value, dict):
            raise InputError(f"config key {key!r} must be a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads '1e-4' (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(f"config key {key!r} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InputError(f"config key {key!r} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {hint!r} for config key {key!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise _unknown_key(str(key), names, prefix)
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a validated :class:`RunConfig`; missing keys take the defaults, unknown keys are errors."""
    if not isinstance(data, dict):
        raise InputError(f"a config must be a mapping, got {type(data).__name__}")
    return _build(RunConfig, data, "")


# ---------------------------------------------------------------------------------------------------
# YAML files, includes and overrides


def packaged_configs() -> list[str]:
    """Names of the configs shipped in ``weaktr/configs`` (usable as ``load_config(name)``)."""
    folder = resources.files("weaktr").joinpath("configs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _locate(ref: str, base: Path | Traversable | None) -> Path | Traversable:
    """A packaged name (no suffix, no slash), else a path relative to ``base`` (the including file's dir)."""
    if "/" not in ref and "\\" not in ref and not ref.endswith((".yaml", ".yml")):
        source = resources.files("weaktr").joinpath("configs", f"{ref}.yaml")
        if not source.is_file():
            raise InputError(f"no packaged config named {ref!r}; available: {', '.join(packaged_configs())}")
        return source
    path = Path(ref).expanduser()
    if not path.is_absolute() and base is not None:
        return base.joinpath(ref)
    return path


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value in ``top`` (lists included) replaces ``base``'s."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_layers(source: Path | Traversable, seen: tuple[str, ...]) -> dict[str, Any]:
    """Read one YAML file with its ``include:`` chain resolved (later includes win, the file wins last)."""
    ident = str(source)
    if ident in seen:
        raise InputError(f"config include cycle: {' -> '.join([*seen, ident])}")
    if not source.is_file():
        raise InputError("config file not found", ident)
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({exc})", ident) from exc
    if not isinstance(data, dict):
        raise InputError("a config file must hold a mapping at the top level", ident)
    includes = data.pop(INCLUDE_KEY, None) or []
    if isinstance(includes, str):
        includes = [includes]
    base_dir = (
        Path(ident).parent if isinstance(source, Path) else resources.files("weaktr").joinpath("configs")
    )
    merged: dict[str, Any] = {}
    for ref in includes:
        merged = _deep_merge(merged, _read_layers(_locate(str(ref), base_dir), (*seen, ident)))
    return _deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'seg_train.gc.tau=0.8'`` -> (['seg_train', 'gc', 'tau'], 0.8); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise InputError(f"override {text!r} is not of the form dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise InputError(f"override {text!r}: the value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key in a copy of ``data``; key names are checked later by :func:`config_from_dict`."""
    out = _deep_merge({}, data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None and part not in node:
                raise _unknown_key(part, sorted(node), ".".join(parts[:i]) + "." if i else "")
            if not isinstance(child, dict):
                raise InputError(f"override {text!r}: {'.'.join(parts[: i + 1])!r} is not a section")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return out


def load_config(path_or_name: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file or packaged config name (e.g. ``voc``, ``demo``), then overrides."""
    data = RunConfig().to_dict()
    if path_or_name is not None:
        ref = str(path_or_name)
        source = Path(ref).expanduser() if Path(ref).expanduser().is_file() else _locate(ref, None)
        data = _deep_merge(data, _read_layers(source, ()))
    return config_from_dict(apply_overrides(data, list(overrides or [])))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the merged config as YAML atomically (the copy that lives beside a run's outputs)."""
    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None))
