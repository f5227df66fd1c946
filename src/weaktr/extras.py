"""The optional extras (``pip install 'weaktr[crf]'`` ...): one check, one message, lazy imports.

A bare ``pip install weaktr`` must import, show ``--help`` and run every command that needs no
extra. So no module imports an optional library at import time: the code that uses one calls
:func:`load` where it does, and a command (or a run, before its first stage) that will need one
calls :func:`require` before any work, so that the user reads one line naming the pip command
instead of a traceback hours into a run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from weaktr.errors import InputError

# extra -> the modules it provides (pydensecrf2 installs as ``pydensecrf``)
EXTRAS: dict[str, tuple[str, ...]] = {
    "crf": ("pydensecrf.densecrf", "pydensecrf.utils"),
    "viz": ("matplotlib",),
    "tb": ("tensorboard",),
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
}


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:  # not installed, or blocked (``sys.modules[name] = None``), or broken
        return False
    return True


def missing(extra: str, *modules: str) -> list[str]:
    """The modules of ``extra`` (or only ``modules`` of it) that cannot be imported, by package name."""
    wanted = modules or EXTRAS[extra]
    names = [m.split(".")[0] for m in wanted if not _importable(m)]
    return list(dict.fromkeys(names))


def install_hint(extra: str) -> str:
    return f"pip install 'weaktr[{extra}]'"


def require(extra: str, why: str, *modules: str) -> None:
    """Raise :class:`InputError` ("``why`` needs X: pip install 'weaktr[extra]'") unless the modules of
    ``extra`` (or only ``modules`` of it) import; ``why`` names what needs them ("the report")."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; extras are {', '.join(EXTRAS)}")
    absent = missing(extra, *modules)
    if absent:
        raise InputError(f"{why} needs {', '.join(absent)}: {install_hint(extra)}")


def load(extra: str, why: str, module: str) -> ModuleType:
    """``import module`` (part of ``extra``), or the one-line :func:`require` error."""
    require(extra, why, module)
    return importlib.import_module(module)
