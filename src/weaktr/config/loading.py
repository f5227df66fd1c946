"""Where a run's config comes from: the schema's defaults, a YAML file, then ``key=value`` overrides.

A YAML file may name others under ``include:`` (packaged names such as ``voc``, or paths relative to
the including file); later includes win and the file wins last. OmegaConf reads the YAML (so ``1e-4``
is a float), parses the overrides (``cam_gen.scales=[1.0,0.8,1.2]``) and merges every layer onto
``OmegaConf.structured(RunConfig)``: mappings key by key, lists replaced; an override whose value is
a mapping (``seeds.crf_params={gauss_sxy: 2}``) replaces the mapping there. The merged config is saved
beside a run's outputs (:func:`save_config`), and that file loads again, so a run can always be
repeated from its own directory.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from weaktr.config.schema import RunConfig
from weaktr.config.validation import merge_layer, one_line, to_run_config
from weaktr.errors import InputError
from weaktr.io import atomic_write

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

INCLUDE_KEY = "include"


@functools.cache
def _schema() -> DictConfig:
    """The typed defaults every load starts from: built once (it takes tens of ms), read-only, since
    ``OmegaConf.merge`` copies its first argument instead of changing it."""
    schema = OmegaConf.structured(RunConfig)
    OmegaConf.set_readonly(schema, True)
    return schema


def _packaged_dir() -> Traversable:
    return resources.files("weaktr").joinpath("configs")


def packaged_configs() -> list[str]:
    """Names of the configs shipped in ``weaktr/configs`` (usable as ``load_config(name)``)."""
    return sorted(p.name[:-5] for p in _packaged_dir().iterdir() if p.name.endswith(".yaml"))


def _locate(ref: str, base: Path | Traversable | None) -> Path | Traversable:
    """A packaged name (no suffix, no slash), else a path relative to ``base`` (the including file's dir)."""
    if "/" not in ref and "\\" not in ref and not ref.endswith((".yaml", ".yml")):
        source = _packaged_dir().joinpath(f"{ref}.yaml")
        if not source.is_file():
            raise InputError(f"no packaged config named {ref!r}; available: {', '.join(packaged_configs())}")
        return source
    path = Path(ref).expanduser()
    if not path.is_absolute() and base is not None:
        return base.joinpath(ref)
    return path


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``found duplicate key name at line 2, column 1``: what is wrong and where, on one line."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem and exc.problem_mark:
        return f"{exc.problem} at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
    return one_line(exc)


def _read_layers(source: Path | Traversable, seen: tuple[str, ...]) -> list[tuple[str, DictConfig]]:
    """One YAML file as (file, layer) pairs in merge order: its includes' layers, then its own."""
    ident = str(source)
    if ident in seen:
        raise InputError(f"config include cycle: {' -> '.join([*seen, ident])}")
    if not source.is_file():
        raise InputError("config file not found", ident)
    try:
        layer = OmegaConf.create(source.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {_yaml_problem(exc)}", ident) from None
    except OmegaConfBaseException as exc:  # e.g. an unterminated ${interpolation
        raise InputError(f"config key {exc.full_key!r}: {one_line(exc)}", ident) from None
    if not isinstance(layer, DictConfig):
        raise InputError("a config file must hold a mapping at the top level", ident)
    includes = layer.pop(INCLUDE_KEY, None) or []
    refs = [includes] if isinstance(includes, str) else includes
    if not isinstance(refs, list | ListConfig) or not all(isinstance(ref, str) for ref in refs):
        raise InputError(f"{INCLUDE_KEY!r} must be a config name or path, or a list of them", ident)
    base_dir = Path(ident).parent if isinstance(source, Path) else _packaged_dir()
    layers = []
    for ref in refs:
        layers += _read_layers(_locate(ref, base_dir), (*seen, ident))
    return [*layers, (ident, layer)]


def _override_layer(text: str) -> DictConfig:
    """``'seg_train.gc.tau=0.8'`` as a one-key layer; the value is read as YAML."""
    key, sep, _ = text.partition("=")
    if not sep or any(not part for part in key.split(".")):
        raise InputError(f"override {text!r} is not of the form dotted.key=value")
    try:
        return OmegaConf.from_dotlist([text])
    except yaml.YAMLError as exc:
        raise InputError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(exc)})") from None
    except OmegaConfBaseException as exc:
        raise InputError(f"override {text!r}: {one_line(exc)}") from None


def _holds_mapping(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` is a mapping in ``cfg`` (interpolations are left unresolved for now)."""
    return OmegaConf.is_dict(OmegaConf.select(cfg, key, throw_on_resolution_failure=False))


def _cleared(cfg: DictConfig, key: str) -> DictConfig:
    """``cfg`` with the mapping at ``key`` back to the schema's defaults (a model section: emptied).

    A ``key={...}`` override states the whole mapping, as it did before OmegaConf: on the demo,
    ``seeds.crf_params={bilateral_sxy: 20}`` leaves the other kernels to the preset rather than to
    the demo file, and ``cam_model={...}`` is exactly the model given. YAML layers merge instead.
    """
    default = OmegaConf.select(_schema(), key)
    section = OmegaConf.is_dict(default) and dataclasses.is_dataclass(OmegaConf.get_type(default))
    cleared = copy.deepcopy(cfg)
    OmegaConf.set_readonly(cleared, False)
    OmegaConf.update(cleared, key, default if section else {}, merge=False)
    return cleared


def load_config(path_or_name: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file or packaged config name (e.g. ``voc``, ``demo``), then overrides."""
    cfg = _schema()
    if path_or_name is not None:
        ref = str(path_or_name)
        source = Path(ref).expanduser() if Path(ref).expanduser().is_file() else _locate(ref, None)
        for ident, layer in _read_layers(source, ()):
            cfg = merge_layer(cfg, layer, ident)
    for text in overrides or []:
        layer, key = _override_layer(text), text.partition("=")[0]
        if all(_holds_mapping(c, key) for c in (layer, cfg)):
            cfg = _cleared(cfg, key)
        cfg = merge_layer(cfg, layer)
    return to_run_config(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the merged config as YAML atomically (the copy that lives beside a run's outputs)."""
    with atomic_write(path) as tmp:
        OmegaConf.save(OmegaConf.structured(cfg), tmp)
