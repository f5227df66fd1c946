"""The figures every benchmark script judges by, in one place (no torch: summary.py stays light).

- ``AGREEMENT_MIN``: a bf16 (or other low-precision) result counts only when this share of its seed
  or prediction pixels agrees with float32;
- ``CAM_TARGETS``: CAM generation against the authors' loop re-enacted on the same machine;
- ``AUTHORS``: seconds the authors' own code took in float32 on a 2-core machine on 2026-12-03
  (no 1-scale inference figure was taken);
- ``BF16_SKIPPED_CELL``: what every table shows for a bf16 measurement a run skipped (its results'
  ``"bf16_skipped"``: a CPU without native bf16); its targets are "not measured", never met.
"""

from __future__ import annotations

AGREEMENT_MIN = 0.995
BF16_SKIPPED_CELL = "skipped (no native bf16)"
CAM_TARGETS = {"float32": 2.0, "bf16": 3.0}
AUTHORS: dict[str, float | None] = {
    "cam_train_step": 2.46,
    "cam_gen": 4.60,
    "seg_train_step": 11.24,
    "infer_1scale": None,
    "infer_6scale_flip_ens": 37.0,
}
