"""Predictions of a trained segmenter for a whole split (spec §2.5, §2.6), resumable and DDP-sharded.

Per image: multi-scale + flip sliding-window scores with the two-layer ensemble, argmax, and the
label set ``keys`` that the argmax uses. As the authors do, the softmax CRF then sees only the scores
of ``keys`` (unary −log of the unnormalised score) and its argmax is mapped back through ``keys``.
The CRF runs in a process pool while the network goes on with the next images.

Outputs (palette PNGs, atomic): ``out_dir/<id>.png`` (after CRF when on), ``<out_dir>_nocrf/<id>.png``
(before CRF, written only when the CRF runs) and, optionally, ``<out_dir>_probs/<id>.npz`` with
``probs`` float16 (K, H, W) — the ensemble score over its total weight, for the K present classes —
and ``classes`` int64 (K,) label ids. Images whose outputs exist are skipped, so a rerun resumes.
The same function makes the train split's pseudo masks ("WeakTr as a labelling tool").
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from weaktr.cores import cap_workers, usable_cores
from weaktr.crf import CRFParams, softmax_crf
from weaktr.data.images import load_image
from weaktr.data.palette import voc_palette
from weaktr.evaluation.inference import InferenceSettings, predict_probs
from weaktr.evaluation.onnx_backend import load_seg_net
from weaktr.io import save_label_png, write_probs
from weaktr.pools import PerItem, process_pool
from weaktr.runtime.context import RunContext
from weaktr.runtime.distributed import barrier, shard
from weaktr.runtime.layout import nocrf_dir, probs_dir
from weaktr.runtime.logging import progress

log = logging.getLogger("weaktr")
CRFJob = tuple[np.ndarray, np.ndarray, np.ndarray, CRFParams, Path, list[int] | None]


def _crf_job(job: CRFJob) -> None:
    """Softmax CRF over the present classes, mapped back to label ids.

    Module-level so it pickles; numpy only, as torch ops can deadlock in forked workers (OpenMP).
    """
    image, scores, keys, params, out_path, palette = job
    save_label_png(out_path, keys[softmax_crf(image, scores, params)].astype(np.uint8), palette)


def _crf_item(job: CRFJob) -> str:
    return f"image {job[4].stem}"


_run_crf_job = PerItem(_crf_job, _crf_item)  # a failure names the image


class _CRFQueue:
    """Runs CRF jobs in ``workers`` processes (in-process when ≤ 1), at most 2·workers in flight."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = process_pool(workers) if workers > 1 else None
        self.pending: deque[Future[None]] = deque()

    def submit(self, job: CRFJob) -> None:
        if self.pool is None:
            _run_crf_job(job)
            return
        self.pending.append(self.pool.submit(_run_crf_job, job))
        while len(self.pending) > 2 * self.workers:
            self.pending.popleft().result()

    def close(self) -> None:
        """Wait for every job (re-raising the first failure) and stop the processes."""
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)


def predict_split(
    ctx: RunContext,
    model_path: Path,
    split: str,
    out_dir: Path,
    crf: bool,
    save_probs: bool = False,
    backend: str = "torch",
) -> Path:
    """Write the predictions of ``split`` to ``out_dir`` (see the module docstring); returns ``out_dir``.

    ``backend`` runs a checkpoint in PyTorch (``torch``) or an ONNX export in ``onnxruntime``.
    """
    info, p = ctx.dataset, ctx.cfg.predict
    out_dir = Path(out_dir)
    nocrf, probs = nocrf_dir(out_dir), probs_dir(out_dir)
    ctx.clear_temporaries(out_dir, nocrf, probs)
    model = load_seg_net(model_path, backend, ctx.execution.predict)
    info.check_model_classes(model.n_cls, cam=False, checkpoint=model_path)
    ids = shard(info.ids(split), ctx.dist.rank, ctx.dist.world)
    todo = [
        i
        for i in ids
        if not (out_dir / f"{i}.png").is_file() or (save_probs and not (probs / f"{i}.npz").is_file())
    ]
    palette = voc_palette() if info.palette == "voc" else None
    params = CRFParams.build("softmax", p.crf_preset, p.crf_params.set_values()) if crf else None
    settings = InferenceSettings.from_config(p)
    total_weight = 1.0 + (settings.ensemble_weight or 0.0)
    share = ctx.dist.world  # the ranks share the node's cores; 0 = all of this rank's share
    workers = cap_workers(p.workers or usable_cores(share), "predict.workers", share)
    if len(todo) < len(ids):
        log.info("predict %s: %d of %d images done before, skipped", split, len(ids) - len(todo), len(ids))
    out_dir.mkdir(parents=True, exist_ok=True)
    queue = _CRFQueue(workers if crf else 0)
    try:
        for image_id in progress(todo, desc=f"predict {split}", enabled=ctx.dist.is_main):
            image = load_image(info.image_path(image_id))
            score = predict_probs(model, image, settings, ctx.device)
            pred = score.argmax(0)
            keys = torch.unique(pred)
            present = score[keys].cpu().numpy()
            keys_np = keys.cpu().numpy()
            if save_probs:
                write_probs(probs / f"{image_id}.npz", present / total_weight, keys_np)
            labels = pred.cpu().numpy().astype(np.uint8)
            if params is None:
                save_label_png(out_dir / f"{image_id}.png", labels, palette)
                continue
            save_label_png(nocrf / f"{image_id}.png", labels, palette)
            queue.submit((image, present, keys_np, params, out_dir / f"{image_id}.png", palette))
    finally:
        queue.close()
    barrier()
    return out_dir
