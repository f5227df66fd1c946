"""WeakTr: weakly-supervised semantic segmentation from image-level labels with plain ViTs."""

__version__ = "0.1.0"
