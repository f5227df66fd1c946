"""JSONL logs are valid line by line; the human log lands in run_dir/log.txt."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from weaktr.runtime.layout import RunLayout
from weaktr.runtime.logging import JsonlLogger, format_seconds, progress, setup_logging


def test_jsonl_lines_are_valid_json(tmp_path):
    path = tmp_path / "sub" / "metrics.jsonl"
    with JsonlLogger(path) as log:
        log.log({"epoch": 0, "loss": torch.tensor(0.5)}, lr=np.float32(1e-4), miou=float("nan"))
        log.log(epoch=1, per_class=np.array([0.25, 0.5]))
    with JsonlLogger(path) as log:  # appends, never truncates
        log.log(epoch=2)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    assert lines[0]["loss"] == 0.5 and lines[0]["miou"] is None
    assert lines[0]["lr"] == np.float32(1e-4).item() and lines[1]["per_class"] == [0.25, 0.5]


def test_disabled_logger_writes_nothing(tmp_path):
    JsonlLogger(tmp_path / "x.jsonl", enabled=False).log(a=1)
    assert not (tmp_path / "x.jsonl").exists()


def test_setup_logging_writes_log_txt_once(tmp_path):
    setup_logging(tmp_path, is_main=True)
    logger = setup_logging(tmp_path, is_main=True)  # again: handlers replaced, not doubled
    logger.info("hello %d", 3)
    for h in logger.handlers:
        h.flush()
    assert RunLayout(tmp_path).log_txt == tmp_path / "log.txt"
    assert RunLayout(tmp_path).log_txt.read_text().count("hello 3") == 1
    worker = setup_logging(tmp_path / "rank1", is_main=False)
    assert worker.level == logging.WARNING and not (tmp_path / "rank1").exists()
    setup_logging(None)


def test_progress_and_format_seconds():
    assert list(progress(range(3), desc="x", enabled=False)) == [0, 1, 2]
    assert format_seconds(12.34) == "12.3s"
    assert format_seconds(245) == "4m05s"
    assert format_seconds(3723) == "1h02m03s"
