"""The authors' ``cls_labels.npy`` is read through a restricted unpickler: arrays in, code never run."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from weaktr.data.labels import build_image_labels, labels_from_cls_npy
from weaktr.data.voc import VOC_CLASSES
from weaktr.errors import InputError
from weaktr.io import read_npy_dict


class _Payload:
    """Pickles as ``os.system("touch MARKER")``: what a hostile cls_labels.npy would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def _authors_table() -> dict[str, np.ndarray]:
    vec = np.zeros(20, np.float32)
    vec[[0, 14]] = 1
    return {"2007_000032.jpg": vec, "2007_000039": np.eye(20, dtype=np.float64)[6]}


def test_reads_a_cls_labels_like_file(tmp_path: Path) -> None:
    np.save(tmp_path / "cls_labels.npy", _authors_table())
    assert labels_from_cls_npy(tmp_path / "cls_labels.npy") == {"2007_000032": [1, 15], "2007_000039": [7]}


def test_reads_a_file_written_by_numpy_1(tmp_path: Path) -> None:
    """numpy 1.x names the array rebuilder ``numpy.core.multiarray._reconstruct``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    body = pickle.dumps(np.array(_authors_table(), dtype=object), protocol=3)
    old = body.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")  # GLOBAL is text
    assert old != body
    (tmp_path / "old.npy").write_bytes(buf.getvalue() + old)
    assert labels_from_cls_npy(tmp_path / "old.npy")["2007_000032"] == [1, 15]


@pytest.mark.parametrize("wrap", [lambda p: np.array(p, dtype=object), lambda p: {"2007_000032": p}])
def test_a_malicious_pickle_is_refused_without_running(tmp_path: Path, wrap) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "cls_labels.npy"
    np.save(path, wrap(_Payload(marker)), allow_pickle=True)
    with pytest.raises(InputError, match=r"cls_labels\.npy: .*(posix|os)\.system, which is refused"):
        labels_from_cls_npy(path)
    with pytest.raises(InputError, match="refused"):
        build_image_labels(["2007_000032"], VOC_CLASSES, cls_labels=path)
    assert not marker.exists()
    # the payload is live: numpy's own pickle loading runs it
    np.load(path, allow_pickle=True)
    assert marker.exists()


def test_other_contents_are_refused_naming_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "plain.npy", np.zeros(3))
    np.save(tmp_path / "list.npy", np.array([np.zeros(2), "x"], dtype=object))
    np.save(tmp_path / "strings.npy", {"a": np.array(["x"])})
    np.save(tmp_path / "intkeys.npy", {1: np.zeros(2)})
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY\x01\x00" + b"garbage")
    cases = {
        "plain.npy": "plain float64 array",
        "list.npy": "it holds a ndarray",
        "strings.npy": "entries 'a' are not",
        "intkeys.npy": "entries 1 are not",
        "junk.npy": "not a pickled dict of arrays",
        "missing.npy": "file not found",
    }
    for name, problem in cases.items():
        with pytest.raises(InputError, match=problem) as err:
            read_npy_dict(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name)), name
        assert "\n" not in str(err.value)
