"""The checkpoint-selection record: one keeping rule for both phases, JSON as the files have always been."""

from __future__ import annotations

import json

import pytest

from weaktr.engine.selection import CamSelection, Score, SegSelection, Selection

# selection.json files as the trainers wrote them before the record was typed (gt_miou / gt_val runs)
OLD_CAM = """{
  "mode": "gt_miou",
  "split": "train",
  "epoch": 3,
  "history": [
    {
      "epoch": 1,
      "miou": 0.09889038108705567,
      "threshold": 0.15
    },
    {
      "epoch": 3,
      "miou": 0.10045950921131734,
      "threshold": 0.16
    }
  ],
  "miou": 0.10045950921131734,
  "threshold": 0.16
}"""
OLD_CAM_LAST = '{"mode": "last", "split": "train", "epoch": 2, "history": []}'
OLD_SEG = """{
  "select_checkpoint": "gt_val",
  "eval_split": "val",
  "epoch": 1,
  "val_miou": 0.1887478298611111,
  "history": [
    {
      "epoch": 1,
      "val_miou": 0.1887478298611111
    },
    {
      "epoch": 2,
      "val_miou": 0.1887478298611111
    }
  ]
}"""
OLD_SEG_UNSCORED = (
    '{"select_checkpoint": "last", "eval_split": null, "epoch": 2, "val_miou": null, "history": []}'
)


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        (CamSelection, OLD_CAM),
        (CamSelection, OLD_CAM_LAST),
        (SegSelection, OLD_SEG),
        (SegSelection, OLD_SEG_UNSCORED),
    ],
)
def test_files_of_earlier_runs_read_back_and_are_written_the_same(kind: type[Selection], text: str) -> None:
    selection = kind.from_json(json.loads(text))
    indent = 2 if "\n" in text else None
    assert json.dumps(selection.to_json(), indent=indent) == text


def test_the_record_round_trips_through_json() -> None:
    cam = CamSelection("gt_miou", "val", 2, Score(2, 0.5, 0.4), [Score(1, 0.3, 0.45), Score(2, 0.5, 0.4)])
    seg = SegSelection("gt_val", "val", 1, Score(1, 0.6), [Score(1, 0.6), Score(2, 0.55)])
    for selection in (cam, seg, CamSelection("last", "train", 3), SegSelection("last", None, 4)):
        again = type(selection).from_json(json.loads(json.dumps(selection.to_json())))
        assert again == selection


def test_the_spelling_of_each_phase() -> None:
    cam = CamSelection("gt_miou", "val")
    seg = SegSelection("gt_val", "val")
    for selection in (cam, seg):
        selection.update(1, Score(1, 0.5, 0.4 if selection is cam else None))
    assert cam.to_json() == {
        "mode": "gt_miou",
        "split": "val",
        "epoch": 1,
        "history": [{"epoch": 1, "miou": 0.5, "threshold": 0.4}],
        "miou": 0.5,
        "threshold": 0.4,
    }
    assert seg.to_json() == {
        "select_checkpoint": "gt_val",
        "eval_split": "val",
        "epoch": 1,
        "val_miou": 0.5,
        "history": [{"epoch": 1, "val_miou": 0.5}],
    }
    assert cam.done_fields() == {"select_checkpoint": "gt_miou"} and seg.done_fields() == {"val_miou": 0.5}


@pytest.mark.parametrize("kind", [CamSelection, SegSelection])
def test_one_keeping_rule_for_both_phases(kind: type[Selection]) -> None:
    best = kind("gt", "val")
    kept = [
        best.update(e, None if s is None else Score(e, s))
        for e, s in enumerate([0.2, None, 0.1, 0.2, 0.3], 1)
    ]
    assert kept == [True, False, False, False, True]  # an unscored epoch or a tie is not kept
    assert (best.epoch, best.best, len(best.history)) == (5, Score(5, 0.3), 4)

    last = kind("last", "val")
    assert all(last.update(e, None if e % 2 else Score(e, 0.1)) for e in (1, 2, 3))
    assert last.epoch == 3 and last.best is None  # the last epoch, whose score there was none of
