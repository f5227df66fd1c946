"""load_image / load_label_map: every input mode becomes RGB, and every bad file is named in the error."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from weaktr.data.images import load_image, load_label_map
from weaktr.errors import InputError


def _rgb(h: int = 12, w: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgba_drops_alpha(tmp_path):
    arr = np.dstack([_rgb(), np.full((12, 16), 7, np.uint8)])
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr[..., :3])


def test_grayscale_becomes_three_equal_channels(tmp_path):
    grey = _rgb()[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (12, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.fromarray(_rgb(), "RGB").convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8


def test_palette_becomes_its_colours(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette([10, 20, 30, 200, 0, 0, 0, 250, 5] + [0] * (768 - 9))
    img.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 1], [200, 0, 0])
    np.testing.assert_array_equal(out[1, 0], [0, 250, 5])


def test_16bit_greyscale_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 65535], [257 * 100, 257 * 200]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    out = load_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[..., 0], [[0, 255], [100, 200]])


def test_truncated_jpeg_is_rejected_naming_file(tmp_path):
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "t.jpg", quality=95)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t\.jpg"):
        load_image(tmp_path / "t.jpg")


def test_text_file_named_jpg_is_rejected(tmp_path):
    (tmp_path / "fake.jpg").write_text("not an image")
    with pytest.raises(InputError, match=r"fake\.jpg.*not a readable image"):
        load_image(tmp_path / "fake.jpg")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match=r"nope\.jpg: file not found"):
        load_image(tmp_path / "nope.jpg")


def test_label_map_palette_reads_indices(tmp_path):
    idx = np.array([[0, 3, 255]], np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette([1] * 768)
    img.save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_label_map(tmp_path / "m.png", (1, 3), n_cls=4), idx)


def test_label_map_size_mismatch_names_both_sizes(tmp_path):
    Image.fromarray(np.zeros((5, 7), np.uint8), "L").save(tmp_path / "m.png")
    with pytest.raises(InputError, match=r"m\.png.*5x7.*6x7"):
        load_label_map(tmp_path / "m.png", expected_hw=(6, 7))


def test_label_map_out_of_range_ids_are_named(tmp_path):
    Image.fromarray(np.array([[0, 21, 40, 255]], np.uint8), "L").save(tmp_path / "m.png")
    with pytest.raises(InputError, match=r"\[21, 40\]"):
        load_label_map(tmp_path / "m.png", n_cls=21)


def test_label_map_rejects_rgb(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "m.png")
    with pytest.raises(InputError, match="mode RGB"):
        load_label_map(tmp_path / "m.png")
