"""Merging config layers onto the schema, with errors a user can act on.

OmegaConf checks key names, types and ``Literal`` choices while it merges, but its exceptions span
several lines and speak of its own nodes; here they become one-line :class:`InputError` naming the
dotted key, the value and the closest valid key. OmegaConf also converts some values without a word
where a YAML author means something else (``flip: 1`` -> true, ``split: 2012`` -> '2012',
``epochs: '10'`` -> 10, ``lr: .inf``); those are refused, as the hand-written loader did.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from typing import Any, Literal, Union, cast, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from weaktr.config.schema import RunConfig
from weaktr.errors import InputError

_WORDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def merge_layer(cfg: DictConfig, layer: DictConfig, source: str | None = None) -> DictConfig:
    """``cfg`` with ``layer`` merged on (mappings key by key, lists replaced); ``source`` names the file."""
    try:
        merged = cast(DictConfig, OmegaConf.merge(cfg, layer))
        problem = _silent_conversion(OmegaConf.to_container(layer), OmegaConf.to_container(merged), "")
    except TypeError as exc:  # OmegaConf's plain TypeError when a list meets a mapping
        if "incompatible container" not in str(exc):
            raise
        misfit = _misfit(OmegaConf.to_container(layer), OmegaConf.to_container(cfg), "")
        raise InputError(misfit or one_line(exc), source) from None
    except OmegaConfBaseException as exc:
        raise InputError(_explain(exc, layer, cfg), source) from None
    if problem:
        raise InputError(problem, source)
    return merged


def to_run_config(cfg: DictConfig) -> RunConfig:
    """The dataclass instance (interpolations resolved), so attribute access and its methods work."""
    try:
        return cast(RunConfig, OmegaConf.to_object(cfg))
    except OmegaConfBaseException as exc:
        raise InputError(_explain(exc, cfg, cfg)) from None


def one_line(exc: Exception) -> str:
    """An exception's message on one line, without the key/type trailer OmegaConf appends."""
    return " ".join(str(exc).split("\n    full_key:")[0].split())


def _join(key: str, name: Any) -> str:
    return f"{key}.{name}" if key else str(name)


def _inner(hint: Any) -> Any:
    """``X`` for ``X | None``; any other annotation as it is."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _hint_at(key: str) -> Any:
    """The schema's annotation for a dotted key (``seg_train.gc.tau``, ``cam_gen.scales[0]``), else None."""
    hint: Any = RunConfig
    for part in re.findall(r"[^.\[\]]+", key):
        hint = _inner(hint)
        if dataclasses.is_dataclass(hint):
            hint = get_type_hints(hint).get(part)
        elif get_origin(hint) in (list, dict):
            hint = get_args(hint)[-1]
        else:
            return None
    return hint


def _describe(hint: Any) -> str | None:
    """What a value for ``hint`` must be, in a YAML author's words (None where the schema says nothing)."""
    inner = _inner(hint)
    if get_origin(inner) is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(inner))
    if get_origin(inner) is list:
        return "a list"
    if get_origin(inner) is dict or dataclasses.is_dataclass(inner):
        return "a mapping"
    return _WORDS.get(inner)


def _unknown_key(key: str) -> str:
    parent, _, name = key.rpartition(".")
    section = _inner(_hint_at(parent)) if parent else RunConfig
    valid = [f.name for f in dataclasses.fields(section)] if dataclasses.is_dataclass(section) else []
    prefix = f"{parent}." if parent else ""
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    hint = (
        f"did you mean {', '.join(repr(prefix + c) for c in close)}?"
        if close
        else f"valid keys here: {', '.join(valid)}"
    )
    return f"unknown config key {key!r}; {hint}"


def _explain(exc: OmegaConfBaseException, layer: DictConfig, cfg: DictConfig) -> str:
    """One line for an OmegaConf exception raised while merging ``layer`` onto ``cfg``."""
    if not exc.full_key:  # 'Merge error: int is not a subclass of GCConfig' carries no key
        found = _misfit(OmegaConf.to_container(layer), OmegaConf.to_container(cfg), "")
        return found or f"config: {one_line(exc)}"
    key = exc.full_key
    if isinstance(exc, ConfigKeyError) and not isinstance(exc, ValidationError):
        return _unknown_key(key)
    if isinstance(exc, MissingMandatoryValue):
        return f"config key {key!r} has no value ('???')"
    wanted = _describe(_hint_at(key))
    if isinstance(exc, ValidationError) and wanted:
        value = OmegaConf.to_container(exc.value) if OmegaConf.is_config(exc.value) else exc.value
        return f"config key {key!r} must be {wanted}, got {value!r}"
    return f"config key {key!r}: {one_line(exc)}"


def _misfit(new: Any, old: Any, key: str) -> str | None:
    """The first key at which ``new`` puts a non-mapping on a mapping or a non-list on a list."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = (_misfit(item, old[name], _join(key, name)) for name, item in new.items() if name in old)
        return next((f for f in found if f), None)
    for kind, word in ((dict, "a mapping"), (list, "a list")):
        if isinstance(old, kind) and new is not None and not isinstance(new, kind):
            return f"config key {key!r} must be {word}, got {new!r}"
    return None


def _silent_conversion(raw: Any, typed: Any, key: str) -> str | None:
    """The first value of a layer that OmegaConf converted to another type (an int to a float excepted)."""
    if isinstance(raw, dict):
        found = (_silent_conversion(item, typed[name], _join(key, name)) for name, item in raw.items())
        return next((f for f in found if f), None)
    if isinstance(raw, list | tuple):
        found = (_silent_conversion(item, typed[i], f"{key}[{i}]") for i, item in enumerate(raw))
        return next((f for f in found if f), None)
    if isinstance(raw, str) and "${" in raw:  # an interpolation: OmegaConf checks what it resolves to
        return None
    converted = type(raw) is not type(typed) and not (isinstance(typed, float) and type(raw) in (int, str))
    infinite = isinstance(typed, float) and not math.isfinite(typed) and _inner(_hint_at(key)) is float
    if converted or infinite:
        return f"config key {key!r} must be {_describe(_hint_at(key))}, got {raw!r}"
    return None
