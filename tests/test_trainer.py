"""The epoch-loop skeleton through both trainers: one divergence rule and one resume refusal for both."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import test_train_cam
import test_train_seg
from safetensors import safe_open
from safetensors.torch import load_file
from test_train_seg import demo  # noqa: F401  (the module-scoped demo fixture)

import weaktr.stages.train_cam as tc
import weaktr.stages.train_seg as ts
from weaktr.cli import main
from weaktr.data.info import DatasetInfo
from weaktr.engine.state import STATE_KEY
from weaktr.engine.trainer import EpochTrainer
from weaktr.io import load_checkpoint
from weaktr.runtime.context import cpu_bf16_native


@dataclass(frozen=True)
class Phase:
    command: str
    section: str
    module: ModuleType
    loss: str  # the loss function a test poisons, by its name in ``module``
    hint: str  # what the divergence error suggests
    args: Callable[[DatasetInfo, Path], list[str]]


def _nan(out: Any) -> Any:
    """The loss output with every loss turned into NaN (CAM: a dict of losses; seg: (loss, stats))."""
    if isinstance(out, dict):
        return {k: v * float("nan") for k, v in out.items()}
    loss, stats = out
    return loss * float("nan"), stats


PHASES = {
    "cam": Phase(
        "train-cam",
        "cam_train",
        tc,
        "cam_loss",
        # the demo config trains phase 1 in bf16 where the CPU has native bf16, else in float32
        "lower cam_train.lr" + (" or turn off cam_train.amp" if cpu_bf16_native() else ""),
        lambda d, run: ["--config", "demo", *test_train_cam.tiny_overrides(d.root / "dataset.yaml", run)],
    ),
    "seg": Phase(
        "train-seg",
        "seg_train",
        ts,
        "gradient_clipping_loss",
        "lower seg_train.lr",
        lambda d, run: [
            "--seeds",
            str(d.path(d.masks)),
            *test_train_seg.tiny_overrides(d.root / "dataset.yaml", run),
            "seg_train.eval_every=0",
        ],
    ),
}


def _state_epoch(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {})[STATE_KEY])["epoch"]


def _nan_loss_from_call(monkeypatch: pytest.MonkeyPatch, phase: Any, poisoned: Any) -> None:
    """Make the phase's loss NaN on the calls (counted from 1) for which ``poisoned(n)`` holds."""
    calls = {"n": 0}
    original = getattr(phase.module, phase.loss)

    def loss(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        out = original(*args, **kwargs)
        return _nan(out) if poisoned(calls["n"]) else out

    monkeypatch.setattr(phase.module, phase.loss, loss)


@pytest.mark.parametrize("name", list(PHASES))
def test_a_nan_loss_is_one_error_line_and_saves_nothing_of_its_epoch(
    name: str,
    demo: DatasetInfo,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    phase, run = PHASES[name], tmp_path / "run"
    _nan_loss_from_call(monkeypatch, phase, lambda n: n >= 5)  # 4 iterations an epoch: 5 is epoch 2's first
    assert main([phase.command, *phase.args(demo, run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]
    log_file = run / phase.command.split("-")[1] / "log.jsonl"
    assert lines == [
        f"weaktr {phase.command}: error: {log_file}: training diverged: the loss is nan at iteration 1 "
        f"of epoch 2; {phase.hint}"
    ]
    records = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert records[-1] == {"event": "diverged", "epoch": 2, "iter_of_epoch": 1, "loss": None}
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [1]
    # The model and the state are epoch 1's: nothing was written from the diverged epoch.
    phase_dir = log_file.parent
    assert _state_epoch(phase_dir / "state.safetensors") == 1
    kept = load_checkpoint(phase_dir / "model.safetensors")[0]
    state = load_file(phase_dir / "state.safetensors")
    assert kept and all(v.equal(state[f"model.{k}"]) for k, v in kept.items())


@pytest.mark.parametrize("name", list(PHASES))
def test_both_phases_stop_by_the_one_rule_at_the_first_non_finite_loss(
    name: str,
    demo: DatasetInfo,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only iteration 2's loss is NaN: phase 2 checks it before its step, phase 1 with its log window."""
    phase, run = PHASES[name], tmp_path / "run"
    _nan_loss_from_call(monkeypatch, phase, lambda n: n == 2)
    checked: list[tuple[list[float], int]] = []
    rule = EpochTrainer.check_losses

    def spy(self: EpochTrainer, losses: Sequence[float], epoch: int, first_iter: int) -> None:
        checked.append((list(losses), first_iter))
        rule(self, losses, epoch, first_iter)

    monkeypatch.setattr(EpochTrainer, "check_losses", spy)
    assert main([phase.command, *phase.args(demo, run)]) == 2
    phase_dir = run / phase.command.split("-")[1]
    assert f"{phase_dir / 'log.jsonl'}: training diverged: the loss is nan at iteration 2 of epoch 1; " in (
        capsys.readouterr().err
    )
    # every loss went through the rule, iteration 1's finite one too
    seen = {first + i: loss for losses, first in checked for i, loss in enumerate(losses)}
    assert list(seen) == [1, 2] and math.isfinite(seen[1]) and math.isnan(seen[2])
    assert not (phase_dir / "state.safetensors").exists() and not (phase_dir / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("name", "change", "changed"),
    [("cam", "cam_train.lr=0.1", "lr"), ("seg", "seg_train.batch_size=8", "batch_size, iters_per_epoch")],
)
def test_a_state_made_with_other_settings_is_refused_in_both_phases(
    name: str,
    change: str,
    changed: str,
    demo: DatasetInfo,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    phase, run = PHASES[name], tmp_path / "run"
    one_epoch = [*phase.args(demo, run), f"{phase.section}.epochs=1"]
    assert main([phase.command, *one_epoch]) == 0
    state = run / phase.command.split("-")[1] / "state.safetensors"
    before = state.read_bytes()
    capsys.readouterr()
    assert main([phase.command, *one_epoch, change]) == 2
    err = capsys.readouterr().err
    assert (
        f"{state}: training state was made with other settings (changed: {changed}); use another "
        "run_dir or delete the state to start over"
    ) in err
    assert state.read_bytes() == before


def test_a_phase_that_leaves_out_a_hook_is_refused_when_built() -> None:
    from weaktr.engine.trainer import EpochTrainer

    class NoHooks(EpochTrainer):
        name, section = "train-x", "cam_train"

    with pytest.raises(TypeError, match="abstract"):
        NoHooks(None, None, None)  # type: ignore[arg-type]
