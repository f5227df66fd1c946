"""Where every artefact of a run directory lives: the one place that spells a run's file names.

Stages, the report, the API and the commands all ask a :class:`RunLayout` for paths, so a rename here
moves an artefact everywhere at once, and a reader never guesses where a writer put something.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.safetensors"  # weights + the config that rebuilds the model (weaktr.io)
STATE_FILE = "state.safetensors"  # resumable training state
TRAIN_LOG = "log.jsonl"  # one JSON record per logged iteration / epoch


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory (nothing is created by asking)."""

    root: Path

    @classmethod
    def of(cls, run_dir: str | Path) -> RunLayout:
        return cls(Path(run_dir))

    # -- the run as a whole -------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        """The merged config, which ``weaktr run`` accepts again."""
        return self.root / "config.yaml"

    @property
    def log_txt(self) -> Path:
        """Everything the run logged, across calls (appended on resume)."""
        return self.root / "log.txt"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def data_check(self) -> Path:
        """The fingerprint of the data check this run made of a data set that ``prepare`` did not check."""
        return self.root / "data_check.json"

    @property
    def demo_data(self) -> Path:
        """The generated demo data set (``data.dataset: demo``)."""
        return self.root / "data"

    def stage_marker(self, stage: str) -> Path:
        """Written when a pipeline stage completes; a stage with a marker is skipped on resume."""
        return self.stages / f"{stage}.json"

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    # -- phase 1: the CAM network, its CAMs and seeds -----------------------------------------------
    @property
    def cam(self) -> Path:
        return self.root / "cam"

    @property
    def cam_model(self) -> Path:
        return self.cam / MODEL_FILE

    @property
    def cam_state(self) -> Path:
        return self.cam / STATE_FILE

    @property
    def cam_log(self) -> Path:
        return self.cam / TRAIN_LOG

    @property
    def cam_selection(self) -> Path:
        """Which epoch's CAM network was kept, and why."""
        return self.cam / "selection.json"

    @property
    def cam_select_work(self) -> Path:
        """Scratch CAMs of the per-epoch GT selection (removed when training ends)."""
        return self.cam / "select_cams"

    @property
    def cams(self) -> Path:
        """The CAMs the seeds are made from (``<id>.npz``)."""
        return self.root / "cams"

    def cams_of(self, kind: str) -> Path:
        """CAMs of another kind (coarse, fused, refined), scored for the report only."""
        return self.root / f"cams_{kind}"

    def seeds(self, crf: bool) -> Path:
        """Seed label PNGs, before or after the label CRF."""
        return self.root / ("seeds_crf" if crf else "seeds")

    @property
    def views(self) -> Path:
        """CAM / attention views of a few sample images, computed by the views stage for the report."""
        return self.root / "views"

    @property
    def views_index(self) -> Path:
        """Which images have views, their class and query point, and the CAM network's layout."""
        return self.views / "index.json"

    def view(self, image_id: str) -> Path:
        """One sample image's maps (coarse, cross-attention, patch attention, fine, fused) and AAF weights."""
        return self.views / f"{image_id}.npz"

    # -- phase 2: the segmenter and its predictions -------------------------------------------------
    @property
    def seg(self) -> Path:
        return self.root / "seg"

    @property
    def seg_model(self) -> Path:
        return self.seg / MODEL_FILE

    @property
    def seg_onnx(self) -> Path:
        """The segmenter exported for onnxruntime (``weaktr export-model``)."""
        return self.seg / "model.onnx"

    @property
    def seg_state(self) -> Path:
        return self.seg / STATE_FILE

    @property
    def seg_log(self) -> Path:
        return self.seg / TRAIN_LOG

    @property
    def seg_selection(self) -> Path:
        """Which epoch's segmenter was kept, and why."""
        return self.seg / "selection.json"

    @property
    def pred_root(self) -> Path:
        return self.root / "pred"

    def pred(self, split: str) -> Path:
        """Predicted label PNGs of a split (after the softmax CRF when it is on)."""
        return self.pred_root / split

    # -- scores and the report ----------------------------------------------------------------------
    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def metrics(self, name: str) -> Path:
        return self.metrics_dir / f"{name}.json"

    @property
    def seed_threshold(self) -> Path:
        """The seed threshold swept on pixel GT (``seeds.threshold_from: gt_sweep``) and its sweep."""
        return self.metrics("seed_threshold")

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report(self) -> Path:
        return self.report_dir / "index.html"

    def report_figure(self, name: str) -> Path:
        """A PNG figure of the report (``iou``, ``cams``, ...), linked from index.html by its file name."""
        return self.report_dir / f"{name}.png"

    @property
    def report_css(self) -> Path:
        """The report's stylesheet, copied beside index.html so the folder stands alone."""
        return self.report_dir / "report.css"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files (when tensorboard is installed)."""
        return self.root / "tb"


def nocrf_dir(pred_dir: Path) -> Path:
    """The predictions of ``pred_dir`` before the softmax CRF, beside it (``pred/val`` →
    ``pred/val_nocrf``); a function of the folder, as ``weaktr predict --out`` may be outside the run."""
    return pred_dir.parent / f"{pred_dir.name}_nocrf"


def probs_dir(pred_dir: Path) -> Path:
    """The class probabilities of ``pred_dir``'s predictions (``predict --save-probs``), beside it."""
    return pred_dir.parent / f"{pred_dir.name}_probs"
