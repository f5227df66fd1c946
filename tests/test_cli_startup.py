"""``weaktr --help``, ``weaktr COMMAND --help`` and a mistyped command answer without loading torch."""

from __future__ import annotations

import subprocess
import sys

from weaktr.choices import BACKENDS, CAM_KINDS, STAGE_NAMES
from weaktr.cli import COMMANDS

# what the parser must not load: torch, timm, the numeric stack, the pipeline and the stages
HEAVY = ("torch", "timm", "numpy", "PIL", "omegaconf", "matplotlib", "weaktr.pipeline", "weaktr.stages")

_PROBE = """
import sys
from weaktr.cli import COMMANDS, build_parser
parser = build_parser()
parser.format_help()
for name in COMMANDS:
    try:
        parser.parse_args([name.replace("_", "-"), "--help"])
    except SystemExit:
        pass
heavy = {heavy!r}
print(sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy)))
"""


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)


def test_the_parser_and_every_command_help_load_nothing_heavy() -> None:
    out = _python("-c", _PROBE.format(heavy=HEAVY))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_python_m_weaktr_help_imports_no_torch() -> None:
    out = _python("-X", "importtime", "-m", "weaktr", "--help")
    assert out.returncode == 0 and "usage: weaktr" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "weaktr.cli" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "timm", "numpy")}


def test_a_mistyped_command_is_refused_at_once() -> None:
    out = _python("-m", "weaktr", "trian-cam")
    assert out.returncode == 2
    assert "invalid choice: 'trian-cam'" in out.stderr and "Traceback" not in out.stderr


def test_the_help_choices_are_the_ones_the_code_uses() -> None:
    from weaktr.cam import generate
    from weaktr.evaluation import onnx_backend
    from weaktr.pipeline import STAGES

    assert tuple(s.name for s in STAGES) == STAGE_NAMES
    assert generate.CAM_KINDS == CAM_KINDS and onnx_backend.BACKENDS == BACKENDS
    assert len(set(COMMANDS)) == len(COMMANDS)
