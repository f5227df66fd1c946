"""Multi-scale + flip CAM generation: preprocessing, fusion, batching, files and resume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weaktr.cam.generate import (
    MINMAX_EPS,
    CamGenSettings,
    fuse_cams,
    generate_cams,
    multiscale_cam,
    preprocess_scales,
    resize_bicubic,
)
from weaktr.errors import InputError
from weaktr.io import load_cams

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CPU = torch.device("cpu")
ONE = CamGenSettings((1.0,))


@dataclass
class FakeOutput:
    fused_cam: torch.Tensor
    fine_cam: torch.Tensor
    refine: bool

    def cam(self, kind: str) -> torch.Tensor:
        if kind not in ("default", "fused", "refined"):
            raise InputError(f"unknown CAM kind {kind!r}")
        return self.fine_cam if kind == "refined" or (kind == "default" and self.refine) else self.fused_cam


class FakeCAM(torch.nn.Module):
    """Deterministic input-dependent CAMs on a 16-pixel grid; records each batch it sees."""

    def __init__(self, num_classes: int = 4, refine: bool = True) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_classes=num_classes, refine=refine, normalisation=(MEAN, STD))
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, num_classes * 3).reshape(num_classes, 3))
        self.batches: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> FakeOutput:
        self.batches.append(x.clone())
        pooled = F.avg_pool2d(x, 16)  # (B, 3, h, w)
        fused = torch.einsum("ck,bkhw->bchw", self.weight, pooled).exp()
        return FakeOutput(fused_cam=fused, fine_cam=fused.square(), refine=self.config.refine)


def _image(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_preprocess_sizes_rounding_and_normalisation() -> None:
    image = _image(45, 101)
    inputs = preprocess_scales(image, [1.0, 0.5, 1.2], MEAN, STD)
    # Python rounding: 101*0.5 = 50.5 -> 50, 45*0.5 = 22.5 -> 22, 45*1.2 = 54, 101*1.2 = 121.2 -> 121
    assert [tuple(x.shape) for x in inputs] == [(3, 45, 101), (3, 22, 50), (3, 54, 121)]
    expected = (
        torch.from_numpy(image).permute(2, 0, 1).float() / 255 - torch.tensor(MEAN)[:, None, None]
    ) / (torch.tensor(STD)[:, None, None])
    torch.testing.assert_close(inputs[0], expected)
    assert resize_bicubic(image, 1.0) is image
    with pytest.raises(ValueError, match="uint8"):
        preprocess_scales(image.astype(np.float32), [1.0], MEAN, STD)


def test_fuse_sums_in_order_and_normalises_with_epsilon() -> None:
    a = torch.zeros(2, 2, 2)
    a[0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    a[1] = torch.tensor([[0.0, 0.0], [0.0, 1e-8]])
    b = a * 2
    labels = torch.tensor([1.0, 1.0])
    cams, sums = fuse_cams([a, b], [False, False], labels, (2, 2))
    torch.testing.assert_close(sums, a + b)
    expected0 = (sums[0] - sums[0].min()) / (sums[0].max() - sums[0].min() + MINMAX_EPS)
    torch.testing.assert_close(cams[0], expected0)
    # The epsilon is in the denominator: a class with a range comparable to it stays well below 1.
    assert cams[1].max().item() == pytest.approx(0.75, rel=1e-5)


def test_fuse_flip_back_upsample_and_label_masking() -> None:
    low = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    labels = torch.tensor([0.0, 1.0])
    cams, sums = fuse_cams([low, low.flip(-1)], [False, True], labels, (6, 8))
    up = F.interpolate(low[None], size=(6, 8), mode="bilinear", align_corners=False)[0]
    assert sums.shape == (1, 6, 8)  # only the present class survives
    torch.testing.assert_close(sums[0], 2 * up[1])
    assert cams.min() == 0 and cams.max() == pytest.approx(1.0, abs=1e-6)
    empty, empty_sum = fuse_cams([low], [False], torch.zeros(2), (6, 8))
    assert empty.shape == empty_sum.shape == (0, 6, 8)


def test_multiscale_batches_scale_with_flip_and_matches_fusion() -> None:
    model = FakeCAM(num_classes=4, refine=True).eval()
    image = _image()
    scales = [1.0, 1.5]
    cams, classes = multiscale_cam(model, image, [3, 1], scales, MEAN, STD, CPU)
    assert classes.tolist() == [1, 3] and classes.dtype == torch.int64
    assert cams.shape == (2, 48, 64) and cams.dtype == torch.float32
    assert len(model.batches) == 2  # one forward per scale, image and flip together
    inputs = preprocess_scales(image, scales, MEAN, STD)
    for batch, x in zip(model.batches, inputs, strict=True):
        assert torch.equal(batch[0], x) and torch.equal(batch[1], x.flip(-1))
    maps = [model(torch.stack([x, x.flip(-1)])).fine_cam for x in inputs]
    per_input = [m[k] for m in maps for k in (0, 1)]
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected, _ = fuse_cams(per_input, [False, True, False, True], labels, (48, 64))
    torch.testing.assert_close(cams, expected)


def test_cams_come_at_the_image_size_whatever_the_first_scale() -> None:
    # The authors upsample to the first scale's size (1.0 in their lists); a list starting at 0.8
    # would then give CAMs smaller than the masks, found only when the seeds are scored.
    model = FakeCAM(num_classes=4).eval()
    image = _image(48, 64)
    small_first, _ = multiscale_cam(model, image, [2], [0.8, 1.0], MEAN, STD, CPU)
    one_first, _ = multiscale_cam(model, image, [2], [1.0, 0.8], MEAN, STD, CPU)
    assert small_first.shape == one_first.shape == (1, 48, 64)
    torch.testing.assert_close(small_first, one_first)  # the same sum, in another order


def test_multiscale_refine_flag_and_equal_sizes_share_a_forward() -> None:
    fused = FakeCAM(refine=False).eval()
    fine = FakeCAM(refine=True).eval()
    image = _image()
    a, _ = multiscale_cam(fused, image, [2], [1.0, 1.0], MEAN, STD, CPU)
    b, _ = multiscale_cam(fine, image, [2], [1.0, 1.0], MEAN, STD, CPU)
    assert len(fused.batches) == 1 and fused.batches[0].shape[0] == 4
    assert not torch.allclose(a, b)


def test_multiscale_no_labels_skips_forward_and_bad_label_id() -> None:
    model = FakeCAM().eval()
    cams, classes = multiscale_cam(model, _image(), [], [1.0, 1.2], MEAN, STD, CPU)
    assert cams.shape == (0, 48, 64) and classes.numel() == 0 and not model.batches
    with pytest.raises(InputError, match=r"outside 1\.\.4"):
        multiscale_cam(model, _image(), [5], [1.0], MEAN, STD, CPU)


def test_generate_writes_shards_resumes_and_loads(tmp_path: Path) -> None:
    model = FakeCAM()
    items = [(f"im{i}", _image(seed=i), [1 + i % 4]) for i in range(5)]
    n = generate_cams(model, items[1::2], tmp_path, ONE, CPU, progress=False)  # rank 1 of 2's share
    assert n == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["im1.npz", "im3.npz"]
    with np.load(tmp_path / "im1.npz") as data:
        assert data["cams"].dtype == np.float16 and data["classes"].dtype == np.int64
        assert data["classes"].tolist() == [2]
    cams, classes = load_cams(tmp_path / "im1.npz")
    assert cams.dtype == np.float32 and cams.shape == (1, 48, 64) and classes.tolist() == [2]
    expected, _ = multiscale_cam(model, items[1][1], [2], [1.0], MEAN, STD, CPU)
    np.testing.assert_allclose(cams, expected.numpy(), atol=1e-3)
    model.batches.clear()
    before = (tmp_path / "im1.npz").stat().st_mtime_ns
    n = generate_cams(model, items, tmp_path, ONE, CPU, progress=False)
    assert n == 3 and len(model.batches) == 3  # the two existing files were skipped
    assert (tmp_path / "im1.npz").stat().st_mtime_ns == before


def test_generate_failure_leaves_no_partial_file(tmp_path: Path) -> None:
    def broken() -> np.ndarray:
        raise InputError("cannot read", "broken.jpg")

    items = [("ok", lambda: _image(), [1]), ("bad", broken, [1])]
    with pytest.raises(InputError, match=r"broken\.jpg"):
        generate_cams(FakeCAM(), items, tmp_path, ONE, CPU, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["ok.npz"]


def test_load_cams_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_cams(tmp_path / "missing.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"corrupt\.npz"):
        load_cams(tmp_path / "corrupt.npz")
    np.savez(tmp_path / "wrong.npz", cams=np.zeros((2, 3, 3)), classes=np.zeros(3))
    with pytest.raises(InputError, match="expected"):
        load_cams(tmp_path / "wrong.npz")


def test_maps_of_a_bf16_model_are_fused_in_float32() -> None:
    model = FakeCAM().eval()
    image = _image()
    exact, _ = multiscale_cam(model, image, [1, 2], [1.0], MEAN, STD, CPU)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as a network computing in bf16 would
        fast, _ = multiscale_cam(model, image, [1, 2], [1.0], MEAN, STD, CPU)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, exact, atol=0.1, rtol=0)


def test_generate_several_kinds_from_one_forward(tmp_path: Path) -> None:
    """``also`` writes other CAM kinds from the same forwards, equal to separate single-kind runs."""
    items = [(f"im{i}", _image(seed=i), [1 + i % 4]) for i in range(3)]
    model = FakeCAM()
    two = CamGenSettings((1.0, 0.5), kind="fused")
    generate_cams(
        model, items, tmp_path / "fused", two, CPU, progress=False, also={"refined": tmp_path / "refined"}
    )
    assert len(model.batches) == 2 * 3  # one forward per image and scale, not one per kind
    for kind in ("fused", "refined"):
        generate_cams(
            FakeCAM(), items, tmp_path / f"ref_{kind}", CamGenSettings((1.0, 0.5), kind), CPU, progress=False
        )
        for i, _, _ in items:
            got, _ = load_cams(tmp_path / kind / f"{i}.npz")
            ref, _ = load_cams(tmp_path / f"ref_{kind}" / f"{i}.npz")
            np.testing.assert_array_equal(got, ref)
    fused, _ = load_cams(tmp_path / "fused" / "im0.npz")
    refined, _ = load_cams(tmp_path / "refined" / "im0.npz")
    assert not np.array_equal(fused, refined)
    with pytest.raises(InputError, match="unknown CAM kind"):
        generate_cams(FakeCAM(), items, tmp_path / "x", ONE, CPU, also={"sharp": tmp_path})
    with pytest.raises(ValueError, match="both the main output"):
        generate_cams(FakeCAM(), items, tmp_path / "x", two, CPU, also={"fused": tmp_path})


def test_the_benchmarks_reenactment_of_the_authors_loop_gives_our_cams() -> None:
    """bench_cam compares our generator with the authors' loop re-enacted on the same model: the two
    must compute the same maps, or the speed ratio compares different work."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from cam_authors import cam_gflop, their_cams
    from conftest import TINY_CAM

    from weaktr.cam.generate import batch_cams, prepare_image
    from weaktr.models.cam import CAMConfig, build_cam_model

    torch.manual_seed(0)
    model = build_cam_model(CAMConfig(**TINY_CAM)).eval()
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    prepared = prepare_image("a", image, [1, 3], [1.0, 1.2], (0.5,) * 3, (0.25,) * 3)
    ours, classes = batch_cams(model, [prepared], torch.device("cpu"))[0]
    theirs = their_cams(model, prepared.inputs, [1, 3], amp=False)
    assert classes.tolist() == [1, 3]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert cam_gflop(model, prepared.inputs) > 0
