"""The figures every benchmark script judges by, in one place (no torch: summary.py stays light).

- ``AGREEMENT_MIN``: a bf16 (or other low-precision) result counts only when this share of its seed
  or prediction pixels agrees with float32;
- ``CAM_TARGETS``: CAM generation against the authors' loop re-enacted on the same machine;
- ``AUTHORS``: seconds the authors' own code took (float32, random DeiT-S weights) with the CPU they
  were recorded on. Their figures are divided into ours only when our results were recorded on the
  same kind of CPU (:meth:`AuthorsFigures.other_cpu`): the same model name and the same
  ``SIMD_FLAGS``. The built-in figures are the 2026-12-07 run on a 2-core Xeon with AVX-512 and AMX
  (``shared/bench/authors-xeon-2026-12-07.json``); the earlier built-in ones (2026-11-25 and
  2026-12-03) recorded no CPU, about twice these on the same steps, and are no longer used;
- ``BF16_SKIPPED_CELL``: what every table shows for a bf16 measurement a run skipped (its results'
  ``"bf16_skipped"``: a CPU without native bf16); its targets are "not measured", never met.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

AGREEMENT_MIN = 0.995
BF16_SKIPPED_CELL = "skipped (no native bf16)"
NO_AUTHORS_CELL = "none for this CPU"  # the authors' column where they have no figure from this kind of CPU
CAM_TARGETS = {"float32": 2.0, "bf16": 3.0}
# the CPU flags that tell the kinds of x86 CPU apart for these timings (those the authors' file records);
# common.machine() records the ones a machine has as "cpu_simd_flags"
SIMD_FLAGS = (
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "avx",
    "avx2",
    "avx512_bf16",
    "avx512_vnni",
    "avx512bw",
    "avx512f",
    "avx512vl",
    "fma",
)


def cpu_label(cpu: str | None, flags: Collection[str] | None) -> str:
    """``Intel(R) Xeon(R) Processor [amx_bf16 … fma]``: a CPU's model with its SIMD flags."""
    simd = "SIMD flags not recorded" if flags is None else " ".join(sorted(flags)) or "no SIMD flags"
    return f"{cpu or 'CPU not recorded'} [{simd}]"


@dataclass(frozen=True)
class AuthorsFigures:
    """Seconds per measurement of the authors' own code, and the CPU they were recorded on."""

    seconds: Mapping[str, float | None]
    cpu: str | None  # model name as /proc/cpuinfo gives it; None: not recorded
    simd: tuple[str, ...] | None  # which SIMD_FLAGS it has; None: not recorded
    source: str = ""

    @property
    def label(self) -> str:
        return cpu_label(self.cpu, self.simd)

    def other_cpu(self, machine: Mapping[str, Any] | None) -> str | None:
        """None when ``machine`` (a results file's ``machine`` block) is the kind of CPU these figures
        come from; else why their figures must not be divided into that file's."""
        if self.cpu is None or self.simd is None:
            return "the authors' figures record no CPU"
        if not machine:
            return "the results record no machine"
        flags = machine.get("cpu_simd_flags")
        if flags is None:
            return f"the results record no SIMD flags of their CPU ({machine.get('cpu') or '?'})"
        if machine.get("cpu") != self.cpu or set(flags) & set(SIMD_FLAGS) != set(self.simd):
            return f"the results come from another kind of CPU, {cpu_label(machine.get('cpu'), flags)}"
        return None

    def renamed(self, names: Mapping[str, str]) -> AuthorsFigures:
        """The same figures under a script's own key names (``names``: script key -> key here)."""
        seconds = {mine: self.seconds.get(ours) for mine, ours in names.items()}
        return AuthorsFigures(seconds, self.cpu, self.simd, self.source)

    def record(self) -> dict[str, Any]:
        """What a results file keeps of them."""
        return {
            "seconds": dict(self.seconds),
            "cpu": self.cpu,
            "cpu_simd_flags": self.simd,
            "source": self.source,
        }


def authors_from_json(data: Any, known: Collection[str], section: str, source: str = "") -> AuthorsFigures:
    """Figures from an ``--authors`` file: the authors' own results file (``meta.cpu_model``,
    ``meta.cpu_simd_flags`` and the ``section`` object of seconds, as ``shared/bench``'s), or a flat
    object of seconds, which may name its CPU under ``cpu_model`` and ``cpu_simd_flags``. Raises
    ValueError saying what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    meta = data.get("meta", data)
    if not isinstance(meta, dict):
        raise ValueError("its meta is not a JSON object")
    if "meta" in data and not isinstance(data.get(section), dict):
        raise ValueError(f"the authors' results file has no {section!r} object")
    given = dict(data[section]) if "meta" in data else dict(data)
    cpu, flags = meta.get("cpu_model"), meta.get("cpu_simd_flags")
    for key in ("cpu_model", "cpu_simd_flags"):
        given.pop(key, None)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; known: {sorted(known)}")
    for key, value in given.items():
        if value is not None and (type(value) not in (int, float) or value <= 0):
            raise ValueError(f"{key} must be seconds (a positive number) or null, not {value!r}")
    if cpu is not None and not isinstance(cpu, str):
        raise ValueError(f"cpu_model must be a string, not {cpu!r}")
    if flags is not None and not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
        raise ValueError(f"cpu_simd_flags must be a list of flag names, not {flags!r}")
    simd = None if flags is None else tuple(sorted(set(flags) & set(SIMD_FLAGS)))
    return AuthorsFigures({k: given.get(k) for k in known}, cpu, simd, source)


AUTHORS = AuthorsFigures(
    seconds={
        "cam_train_step": 1.309,  # a: CAM training step, b8 224²
        "cam_gen": 2.8284,  # b: CAM generation, scales 1.0 and 1.2 with flips
        "label_crf": 0.3932,  # e: label CRF, 3 labels
        "seg_train_step": 5.3407,  # c: segmenter training step, b4 480², GC loss
        "infer_1scale": None,  # not measured
        "infer_6scale_flip_ens": 27.1453,  # d2: 6 scales × flip + two-layer ensemble
        "softmax_crf_21": 0.8747,  # e: softmax CRF, 21 labels
    },
    cpu="Intel(R) Xeon(R) Processor",
    simd=SIMD_FLAGS,  # all of them (the file's cpu_simd_flags)
    source="their code on a 2-core Xeon, 2026-12-07 (shared/bench/authors-xeon-2026-12-07.json)",
)
