"""The schema of a run's config: one dataclass per section, which each stage reads.

The dataclass defaults are the authors' documented PASCAL VOC run (spec §1.5, §1.6, §2.3-2.5), so a
YAML file only states what differs. ``OmegaConf.structured(RunConfig)`` turns these classes into the
typed config the layers are merged onto, so the annotations are what OmegaConf checks: scalars, lists,
``X | None`` and ``Literal`` choices. Model sections stay free dictionaries for the model's own
``from_dict`` (``cam_model`` -> ``weaktr.models.cam.CAMConfig``, ``seg_model`` ->
``weaktr.models.segmenter.SegConfig``): the model code, not this file, owns the architecture keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class DemoDataConfig:
    """Size of the generated demo data set (used when ``data.dataset`` is ``demo``)."""

    n_train: int = 2000
    n_val: int = 300
    size: int = 96
    num_classes: int = 6  # foreground classes (the CAM class tokens), as cam_model.num_classes
    seed: int = 0


@dataclass
class DataConfig:
    """Which prepared data set to use and which of its splits play which role.

    ``dataset`` is the path to a prepared ``dataset.yaml`` or the word ``demo`` (the built-in data set,
    generated into the run directory). Split names must exist in that ``dataset.yaml``.
    """

    dataset: str = "data/voc/dataset.yaml"
    train_split: str = "train_aug"  # image-level training; CAMs, seeds and pseudo masks are made for it
    val_split: str = "val"
    # split with pixel GT on which CAMs and seeds are scored (VOC: train, 1 464 images); None = train_split
    cam_eval_split: str | None = "train"
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)

    @property
    def cam_eval_split_or_train(self) -> str:
        """The split CAMs, seeds and pseudo masks are scored on (and the GT choices made on): the one
        reading of ``cam_eval_split``'s None."""
        return self.cam_eval_split or self.train_split


@dataclass
class CamTrainConfig:
    """Phase-1 training (spec §1.5). ``batch_size`` is the total over all ranks."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 6e-4  # base lr; the optimiser uses lr * batch_size / 512 (see engine.optim.scaled_lr)
    weight_decay: float = 0.03
    # lr factor of the pretrained backbone (patch embedding, position grid, blocks; not the class
    # tokens or heads): 1.0 is the authors' one lr for all, 0.0 freezes the backbone
    backbone_lr_scale: float = 1.0
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    img_size: int = 224  # training crop; the model's own img_size sets its position embedding
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    randaug: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    seed: int = 504
    amp: bool = True  # bf16 autocast on CUDA (the authors trained with AMP)
    num_workers: int = 4  # DataLoader workers, at most one per usable core (weaktr.cores)
    pretrained: str | None = "hub"  # 'hub', a local weights file, or null (from scratch)
    # 'gt_miou' = the authors' choice: the epoch whose CAMs score best against pixel GT of
    # data.cam_eval_split (threshold swept over seeds.sweep); 'last' uses no pixel GT at all.
    select_checkpoint: Literal["last", "gt_miou"] = "last"
    log_every: int = 20  # iterations between JSONL log lines


@dataclass
class CamGenConfig:
    """Multi-scale + flip CAM generation (spec §1.6)."""

    scales: list[float] = field(default_factory=lambda: [1.0, 1.2])
    flip: bool = True
    refine: bool | None = None  # patch-attention refinement; None = the model's own cam_model.refine
    amp: bool = True
    # float32 on the CPU: the self-checked fused oneDNN linears of models/cpu_blocks.py, read once into
    # the run's execution policy (env WEAKTR_FUSED_CPU=0 turns them off too); bf16 runs torch's own ops
    fused_cpu: bool = True
    num_workers: int = 4  # DataLoader workers, at most one per usable core (weaktr.cores)


@dataclass
class CRFOverrides:
    """Values replacing the preset's (None keeps it). The presets suit VOC/COCO photos of ~500 px; the
    pairwise kernels are in pixels and colour levels, so much smaller or flatter images want others."""

    gauss_sxy: float | None = None
    gauss_compat: float | None = None
    bilateral_sxy: float | None = None
    bilateral_srgb: float | None = None
    bilateral_compat: float | None = None
    iterations: int | None = None
    gt_prob: float | None = None  # label CRF only

    def set_values(self) -> dict[str, Any]:
        """The overridden values only, for :meth:`weaktr.crf.CRFParams.build`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class SeedConfig:
    """Background threshold + label CRF turning CAMs into seed label maps (spec §1.6)."""

    threshold: float = 0.43
    # 'gt_sweep' picks the threshold with pixel GT of data.cam_eval_split (the authors' practice)
    threshold_from: Literal["config", "gt_sweep"] = "config"
    sweep: list[float] = field(default_factory=lambda: [0.30, 0.59])  # inclusive range, step 0.01
    crf: bool = True
    crf_preset: Literal["voc", "coco"] = "voc"
    crf_params: CRFOverrides = field(default_factory=CRFOverrides)
    workers: int = 0  # CRF processes; 0 = all usable cores (more are lowered to those)


@dataclass
class GCConfig:
    """Gradient-clipping loss (spec §2.3): ``code`` = the authors' batch-mean form."""

    mode: Literal["code", "per_image", "none"] = "code"
    tau: float = 1.2
    cell: int = 120


@dataclass
class SegTrainConfig:
    """Phase-2 online retraining (spec §2.4). ``batch_size`` is the total over all ranks."""

    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-4
    encoder_lr_scale: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    min_lr: float = 1e-5
    power: float = 0.9
    crop: int = 480
    base_size: int = 520
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75
    gc: GCConfig = field(default_factory=GCConfig)
    eval_every: int = 1  # epochs between single-scale val evaluations (0 = never)
    eval_split: str | None = None  # None = data.val_split (COCO: val_5000)
    seed: int = 0
    amp: bool = False  # the authors trained phase 2 in float32
    num_workers: int = 4  # DataLoader workers, at most one per usable core (weaktr.cores)
    pretrained: str | None = "hub"
    # 'gt_val' keeps the epoch with the best val mIoU (GT-based); the authors' docs evaluate the last
    select_checkpoint: Literal["last", "gt_val"] = "last"
    log_every: int = 50


@dataclass
class PredictConfig:
    """Multi-scale + flip sliding-window inference, ensemble and softmax CRF (spec §2.5, §2.6)."""

    scales: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    flip: bool = True
    window: int = 480
    stride: int = 320
    base_size: int = 520
    window_batch: int = 4
    ensemble_weight: float = 0.8  # weight of the decoder-layer-1 output; 0 = off
    crf: bool = True
    crf_preset: Literal["voc", "coco"] = "voc"
    crf_params: CRFOverrides = field(default_factory=CRFOverrides)
    workers: int = 0  # CRF processes; 0 = all usable cores (more are lowered to those)
    amp: bool = False
    fused_cpu: bool = True  # self-checked fused oneDNN ViT blocks on the CPU (env WEAKTR_FUSED_CPU=0: off)
    splits: list[str] = field(default_factory=lambda: ["val", "train"])


@dataclass
class ReportConfig:
    """The HTML report at the end of a run."""

    enabled: bool = True
    n_examples: int = 8  # images shown with their CAM, seed, prediction and GT
    split: str = "val"
    # choices the config's author made beforehand by looking at pixel labels; the report lists them
    gt_choices: list[str] = field(default_factory=list)
    # images of the GT split on which the report-only CAM variants (coarse, the other refine variant)
    # are generated and scored: an evenly spread sample, so scoring costs the same on any data set;
    # null = the whole split
    cam_variant_images: int | None = 300


def _default_cam_model() -> dict[str, Any]:
    return {
        "backbone": "deit_small_patch16_224",
        "num_classes": 20,
        "img_size": 224,
        "drop_path": 0.1,
        "aaf_pool": "max",
        "aaf_reduction": 8,
        "aaf_feat_reduction": 8,
        "refine": True,
    }


def _default_seg_model() -> dict[str, Any]:
    return {
        "backbone": "deit_small_patch16_224",
        "n_cls": 21,
        "image_size": 480,
        "drop_path": 0.1,
    }


@dataclass
class RunConfig:
    """Everything one ``weaktr run`` needs; each stage reads its own section."""

    name: str = "voc"
    run_dir: str = "runs/voc"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    amp_cpu: bool = False  # bf16 autocast also on CPUs with native bf16 (see runtime.context.RunExecution)
    tensorboard: bool = True  # also write RUN_DIR/tb when tensorboard is installed (JSONL stays the record)
    data: DataConfig = field(default_factory=DataConfig)
    cam_train: CamTrainConfig = field(default_factory=CamTrainConfig)
    cam_model: dict[str, Any] = field(default_factory=_default_cam_model)
    cam_gen: CamGenConfig = field(default_factory=CamGenConfig)
    seeds: SeedConfig = field(default_factory=SeedConfig)
    seg_train: SegTrainConfig = field(default_factory=SegTrainConfig)
    seg_model: dict[str, Any] = field(default_factory=_default_seg_model)
    predict: PredictConfig = field(default_factory=PredictConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def refine(self) -> bool:
        """Whether the CAMs in use are PA-refined: cam_gen.refine when set, else the configured model's
        own ``cam_model.refine`` (CAMConfig's default, True, when the section leaves it out)."""
        if self.cam_gen.refine is not None:
            return self.cam_gen.refine
        return bool(self.cam_model.get("refine", True))

    @property
    def train_side_splits(self) -> tuple[str, str]:
        """The splits whose predictions are pseudo masks: the training split, and the GT split its CAMs
        are scored on (VOC trains on train_aug and relabels train, Table I's "train")."""
        return (self.data.train_split, self.data.cam_eval_split_or_train)

    @property
    def pseudo_mask_split(self) -> str:
        """The train-side split that ``predict.splits`` relabels (the training split when none is)."""
        return next((s for s in self.predict.splits if s in self.train_side_splits), self.data.train_split)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-ready)."""
        return dataclasses.asdict(self)
