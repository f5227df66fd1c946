"""The names the command line offers as choices: stages, CAM kinds, inference backends.

They live here, on the bottom floor and without imports, so that ``weaktr --help`` can list them
without loading torch or the modules that define what the names mean (``pipeline.STAGES``,
``cam.generate``, ``evaluation.onnx_backend``), which import them from here.
"""

from __future__ import annotations

# the stages of ``weaktr run``, in order (pipeline.STAGES runs them; a test keeps the two equal)
STAGE_NAMES = ("train_cam", "gen_cam", "eval_cams", "views", "seeds", "train_seg", "predict", "report")
# the CAM maps ``weaktr gen-cam --kind`` writes: the model's own, coarse, fused (no PA) or refined
CAM_KINDS = ("default", "coarse", "fused", "refined")
# how ``weaktr predict --backend`` runs the segmenter
BACKENDS = ("torch", "onnxruntime")
