"""pyproject.toml states ranges, requirements.lock the exact versions installed: the two must agree.

An exact ``==`` pin in pyproject.toml makes weaktr conflict with a user's own torch or Pillow; a
missing upper bound lets the next major release in untested; a lock outside a range means that
``make test`` and CI test versions a user cannot get.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
CORE = [Requirement(r) for r in PROJECT["dependencies"]]
# every extra's requirements but its references to weaktr's other extras (dev pulls in tb and onnx)
EXTRAS = [
    Requirement(r)
    for reqs in PROJECT["optional-dependencies"].values()
    for r in reqs
    if canonicalize_name(Requirement(r).name) != "weaktr"
]
ALL = CORE + EXTRAS


def _lock() -> dict[str, Version]:
    """requirements.lock as {canonical name: version}; every non-comment line must be ``name==version``."""
    found: dict[str, Version] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and name.strip() == name and version.strip() == version, f"not name==version: {line!r}"
        assert canonicalize_name(name) not in found, f"{name} is locked twice"
        found[canonicalize_name(name)] = Version(version)
    return found


@pytest.mark.parametrize("req", ALL, ids=str)
def test_pyproject_states_a_range_with_both_bounds(req: Requirement) -> None:
    operators = {spec.operator for spec in req.specifier}
    assert not operators & {"==", "==="}, f"{req}: a range (>=low,<high), not a pin"
    assert ">=" in operators, f"{req}: no lower bound"
    assert "<" in operators, f"{req}: no upper bound (below the next major)"


def test_the_core_dependencies_are_all_there() -> None:
    """The ones a user's environment most often holds already: each must keep its range."""
    names = {canonicalize_name(r.name) for r in CORE}
    assert {"torch", "torchvision", "timm", "numpy", "pillow"} <= names


@pytest.mark.parametrize("req", ALL, ids=str)
def test_the_lock_holds_every_dependency_inside_its_range(req: Requirement) -> None:
    locked = _lock().get(canonicalize_name(req.name))
    assert locked is not None, f"{req.name} is not in requirements.lock (make remake-lock)"
    assert req.specifier.contains(locked, prereleases=True), f"requirements.lock has {locked}, outside {req}"


def test_the_lock_does_not_lock_weaktr_itself() -> None:
    """A pin of weaktr would stop `pip install -c requirements.lock -e .` at the next version bump."""
    assert "weaktr" not in _lock()
