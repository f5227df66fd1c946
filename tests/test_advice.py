"""Advice that works: every command, flag and override an error message suggests is one the CLI takes.

The suggestions are read from the messages themselves, never copied here: statically from every
message in ``src/weaktr`` (the arguments of ``InputError``, warnings, log lines, and the message
templates), and from the real error lines of a run without data and of an offline run, whose advice
is then followed.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import metadata
from pathlib import Path
from typing import Any

import pytest
import torch
from test_data_prepare import _fake_voc
from test_train_seg import demo  # noqa: F401  (the module-scoped demo fixture)
from test_trainer import PHASES

import weaktr.models.encoder
from weaktr.cli import build_parser, main
from weaktr.commands.common import load_run_config
from weaktr.config import RunConfig, load_config
from weaktr.data.info import DatasetInfo
from weaktr.models import timm_factory
from weaktr.models.cam import CAMConfig, build_cam_model
from weaktr.models.segmenter import SegConfig, build_segmenter
from weaktr.stages.train_cam import CamTrainer
from weaktr.stages.train_seg import SegTrainer

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "weaktr"
# what a message may contain that looks like advice but is not: the form of an override, described
NOT_ADVICE = {"dotted.key=value"}
# values of the f-string fields that advice is built from, so that templated advice is checked too
FIELDS = {"self.section": [CamTrainer.section, SegTrainer.section]}
_MESSAGE_CALL = re.compile(r"(Error|warn|warning|info|error|debug|exit|print)$")
_TEMPLATE_NAME = re.compile(r"(HELP|HINT|COMMANDS|EXTRA|ADVICE|SETTINGS)$")


# -- reading the messages -------------------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    where: str  # file:line
    text: str  # f-string fields rendered as their values (FIELDS) or as {expression}


def _render(node: ast.AST) -> list[str]:
    """The texts a string expression can give: literal parts kept, f-string fields expanded."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        texts = [""]
        for part in node.values:
            if isinstance(part, ast.FormattedValue):
                src = ast.unparse(part.value)
                options = FIELDS.get(src, [f"{{{src}}}"])
            else:
                options = _render(part)
            texts = [t + o for t in texts for o in options]
        return texts
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [a + b for a in _render(node.left) for b in _render(node.right)]
    if isinstance(node, ast.Dict):
        return [t for v in node.values for t in _render(v)]
    if isinstance(node, ast.Tuple | ast.List):
        return [t for v in node.elts for t in _render(v)]
    return []


def messages() -> list[Message]:
    """Every message of the package: call arguments of errors, warnings, logs, prints; templates."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            parts: list[ast.AST] = []
            if isinstance(node, ast.Call) and _MESSAGE_CALL.search(ast.unparse(node.func)):
                parts = list(node.args)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and _TEMPLATE_NAME.search(t.id) for t in node.targets
            ):
                parts = [node.value]
            where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', 0)}"
            found += [Message(where, text) for part in parts for text in _render(part)]
    return found


MESSAGES = messages()


def suggestions(pattern: str) -> list[tuple[str, str]]:
    """(where, match) of ``pattern``'s first group in every message; a match that starts with a field
    (``weaktr {command}: error``: the CLI's own prefix) names nothing to follow."""
    found = [(m.where, g) for m in MESSAGES for g in re.findall(pattern, m.text, re.MULTILINE)]
    return [(w, g) for w, g in found if g not in NOT_ADVICE and not g.startswith("{")]


def _fields_as_values(text: str) -> str:
    """A field stands for a value the code fills in (a run directory, a file): any word will do."""
    return re.sub(r"\{[^}]*\}", "X", text)


def _ids(found: list[tuple[str, str]]) -> list[str]:
    return [f"{w} {s}" for w, s in found]


# quoted in a message, or a whole template (``PREPARE_COMMANDS``)
COMMANDS = suggestions(r"[`']weaktr ([^`']+)[`']") + suggestions(r"^weaktr ([^`']+)$")
OVERRIDES = suggestions(r"(?<![\w.{])((?:[a-z_]+\.)+[a-z_]+=[^\s,;`')]*[^\s,;`').])")
SECTIONS = "|".join(f.name for f in RunConfig.__dataclass_fields__.values())
KEYS = suggestions(rf"(?<![\w.{{/])((?:{SECTIONS})(?:\.[a-z_]+)+)\b(?!=)")
FLAGS = suggestions(r"(?<![\w-])(--[a-z][a-z-]*)")
FIRST = suggestions(r"\brun ([a-z]+(?:-[a-z]+)+) first\b")
EXTRAS = suggestions(r"pip install 'weaktr\[([a-z]+)\]'")


# -- what the CLI accepts -------------------------------------------------------------------------
def accepts(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` as ``weaktr`` does (``cli.main``), and merge its config if it has one."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # exits (SystemExit 2) on a bad command line
    assert not [e for e in extra if e.startswith("-")], f"unrecognized flags {extra}"
    assert not extra or hasattr(args, "overrides"), f"unrecognized arguments {extra}"
    if hasattr(args, "overrides"):
        args.overrides = [*(args.overrides or []), *extra]
        load_run_config(args)
    return args


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _flags() -> set[str]:
    return {o for p in _parsers(build_parser()) for a in p._actions for o in a.option_strings}


def _key_exists(cfg: RunConfig, key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, dict):
            if part not in node:
                return False
            node = node[part]
        elif not hasattr(node, part):
            return False
        else:
            node = getattr(node, part)
    return True


def test_the_scan_reads_the_messages_that_give_advice() -> None:
    """The patterns find the advice of the offline error and of a run without data."""
    assert any(w.startswith("models/timm_factory.py") for w, _ in KEYS)
    assert any(w.startswith("runtime/context.py") for w, _ in COMMANDS)
    assert len(COMMANDS) >= 5 and len(KEYS) >= 5 and len(FLAGS) >= 5


@pytest.mark.parametrize("command", [c for _, c in COMMANDS], ids=_ids(COMMANDS))
def test_every_suggested_command_parses(command: str) -> None:
    argv = shlex.split(_fields_as_values(command))
    assert accepts(argv).command == argv[0]


@pytest.mark.parametrize("override", [o for _, o in OVERRIDES], ids=_ids(OVERRIDES))
def test_every_suggested_override_loads(override: str) -> None:
    override = _fields_as_values(override)
    load_config("voc", [override])
    assert accepts(["run", "voc", override]).command == "run"


@pytest.mark.parametrize("key", [k for _, k in KEYS], ids=_ids(KEYS))
def test_every_key_a_message_names_exists(key: str) -> None:
    cfg = load_config("voc")
    assert _key_exists(cfg, key), f"{key} is not a config key"


@pytest.mark.parametrize("flag", [f for _, f in FLAGS], ids=_ids(FLAGS))
def test_every_flag_a_message_names_exists(flag: str) -> None:
    assert flag in _flags()


@pytest.mark.parametrize("command", [c for _, c in FIRST], ids=_ids(FIRST))
def test_every_command_to_run_first_exists(command: str) -> None:
    assert accepts([command]).command == command


@pytest.mark.parametrize("extra", [e for _, e in EXTRAS], ids=_ids(EXTRAS))
def test_every_extra_to_install_exists(extra: str) -> None:
    assert extra in (metadata("weaktr").get_all("Provides-Extra") or [])


# -- following the advice of real errors ----------------------------------------------------------
def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("config", ["voc", "coco", "demo data.dataset=data/birds/dataset.yaml"])
def test_a_run_without_data_names_the_prepare_command_that_makes_it(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    line = _error(capsys, ["run", *config.split(), "device=cpu"])
    (command,) = re.findall(r"`weaktr ([^`]+)`", line)
    argv = shlex.split(command)
    assert accepts(argv).command == "prepare"
    expected = Path(load_config(config.split()[0], config.split()[1:]).data.dataset)
    assert Path(argv[argv.index("--out") + 1]) == expected.parent
    (override,) = re.findall(r"\b(data\.dataset=\S+)", line)
    accepts(["run", config.split()[0], override])
    if argv[1] == "voc":  # follow it: the VOC folder where the advice expects it
        _fake_voc(Path(argv[argv.index("--root") + 1]))
        assert main(argv) == 0
        assert DatasetInfo.load(expected).name == "voc"


# how each phase builds its network from the run config (as train_cam / train_seg do)
NETWORKS = {
    CamTrainer.section: lambda cfg: build_cam_model(CAMConfig.from_dict(cfg.cam_model)),
    SegTrainer.section: lambda cfg: build_segmenter(SegConfig.from_dict(cfg.seg_model)),
}


def _backbone_weights(monkeypatch: pytest.MonkeyPatch, section: str, cfg: RunConfig, path: Path) -> Path:
    """The timm backbone weights of the phase's network, saved to ``path`` as create_backbone built
    them (exactly the architecture the network asks for), before the network changes them."""
    original = timm_factory.create_backbone
    with monkeypatch.context() as m:

        def spy(name: str, pretrained: str | None = None, *args: Any, **kwargs: Any) -> torch.nn.Module:
            model = original(name, pretrained, *args, **kwargs)
            if not path.exists():
                torch.save({k: v.clone() for k, v in model.state_dict().items()}, path)
            return model

        m.setattr(weaktr.models.encoder, "create_backbone", spy)  # the one builder of both networks
        NETWORKS[section](cfg)
    return path


@pytest.mark.parametrize("name", list(PHASES))
def test_the_offline_advice_names_the_phases_key_and_gets_past_the_check(
    name: str,
    demo: DatasetInfo,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    phase = PHASES[name]
    # one epoch of one batch (the 4 val images)
    argv = [
        phase.command,
        *phase.args(demo, tmp_path / "run"),
        f"{phase.section}.epochs=1",
        "data.train_split=val",
    ]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = _error(capsys, [*argv, f"{phase.section}.pretrained=hub"])
    assert "HF_HUB_OFFLINE" in line
    (local,) = re.findall(r"\b(\S+)=PATH\b", line)
    (scratch,) = re.findall(r"\b(\S+=null)\b", line)
    assert local == scratch.removesuffix("=null") == f"{phase.section}.pretrained"
    # from scratch: the network the phase builds then, whose backbone weights the other advice takes
    cfg = load_run_config(accepts([*argv, scratch]))
    weights = _backbone_weights(monkeypatch, phase.section, cfg, tmp_path / "backbone.pth")
    assert main([*argv, f"{local}={weights}"]) == 0  # offline still: the local file gets past the check
