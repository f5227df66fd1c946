"""Single-process fallbacks, sharding, and a real 2-process gloo group."""

from __future__ import annotations

import argparse
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from weaktr import cli
from weaktr.config import RunConfig
from weaktr.errors import InputError
from weaktr.runtime import distributed as D
from weaktr.runtime.context import RunContext, _warn_emulated_bf16, cpu_bf16_native


def test_single_process_fallbacks(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = D.init_distributed("cpu")
    assert (info.rank, info.world, info.is_main, info.device.type) == (0, 1, True, "cpu")
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    D.barrier()
    model = torch.nn.Linear(2, 2)
    assert D.wrap_ddp(model) is model and D.unwrap_model(model) is model
    assert D.is_main_process()
    D.cleanup()


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shard_covers_every_item_once(world):
    items = list(range(20))
    parts = [D.shard(items, r, world) for r in range(world)]
    assert sorted(x for p in parts for x in p) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_devices_and_batches():
    assert D.resolve_device("cpu") == torch.device("cpu")
    assert D.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            D.resolve_device("cuda")
    with pytest.raises(InputError):
        D.resolve_device("tpu")
    assert D.per_rank_batch(64, 4) == 16
    with pytest.raises(InputError, match="not divisible"):
        D.per_rank_batch(4, 3)


def test_seed_everything_is_per_rank():
    assert D.seed_everything(504, 1) == 505
    a = torch.rand(3)
    D.seed_everything(504, 1)
    assert torch.equal(a, torch.rand(3))


def test_amp_rule_only_where_asked(tmp_path):
    def ctx(device: str, amp_cpu: bool) -> RunContext:
        cfg = RunConfig(amp_cpu=amp_cpu)
        return RunContext(cfg, tmp_path, None, D.DistInfo(0, 1, 0, torch.device(device), True))  # type: ignore[arg-type]

    # cam_gen.amp is on by default, predict.amp off
    assert not ctx("cpu", False).execution.cam_gen.amp
    assert ctx("cpu", True).execution.cam_gen.amp == cpu_bf16_native()
    assert ctx("cuda", False).execution.cam_gen.amp and not ctx("cuda", True).execution.predict.amp


@pytest.mark.parametrize(
    "avx512_bf16, amx, native", [(True, False, True), (False, True, True), (False, False, False)]
)
def test_amp_cpu_needs_native_bf16(tmp_path, monkeypatch, caplog, avx512_bf16, amx, native):
    """amp_cpu on a CPU that only emulates bf16 runs float32, and says so once."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu_bf16_native.cache_clear()
    _warn_emulated_bf16.cache_clear()
    try:
        ctx = RunContext(
            RunConfig(amp_cpu=True), tmp_path, None, D.DistInfo(0, 1, 0, torch.device("cpu"), True)
        )  # type: ignore[arg-type]
        with caplog.at_level("WARNING", logger="weaktr"):
            ex = ctx.execution
            assert ex.cam_gen.amp is native and ex.cam_train.amp is native
        warnings = [r for r in caplog.records if "no native bf16" in r.getMessage()]
        assert len(warnings) == (0 if native else 1)
    finally:
        cpu_bf16_native.cache_clear()
        _warn_emulated_bf16.cache_clear()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    info = D.init_distributed("cpu")
    total = D.all_reduce_sum(torch.tensor([float(rank + 1), 1.0]))
    mine = torch.tensor(D.shard(list(range(10)), info.rank, info.world), dtype=torch.float64).sum()
    D.all_reduce_sum(mine)
    D.barrier()
    if info.is_main:
        torch.save({"total": total, "shard_sum": mine, "world": info.world}, out)
    D.cleanup()


def test_two_process_gloo_all_reduce(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "result.pt")
    # fork: the children need not re-import torch, which keeps the test to a few seconds
    mp.start_processes(_worker, args=(2, port, out), nprocs=2, join=True, start_method="fork")
    result = torch.load(out)
    assert result["world"] == 2
    assert result["total"].tolist() == [3.0, 2.0]
    assert result["shard_sum"].item() == sum(range(10))


def test_the_cli_leaves_the_process_group_after_a_command_that_succeeded(tmp_path, monkeypatch):
    """cli.main leaves torchrun's group once its command returned; after a failure it leaves it be."""

    def fail(args: argparse.Namespace) -> int:
        raise InputError("bad input")

    parser = argparse.ArgumentParser(prog="weaktr")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ok").set_defaults(func=lambda args: 0)
    sub.add_parser("fail").set_defaults(func=fail)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    store = f"file://{tmp_path / 'store'}"
    try:
        dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
        assert cli.main(["fail"]) == 2 and dist.is_initialized()
        assert cli.main(["ok"]) == 0 and not dist.is_initialized()
    finally:
        D.cleanup()
