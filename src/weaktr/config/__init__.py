"""Layered run configuration: package defaults -> a YAML file (with ``include:``) -> ``key=value``.

:mod:`~weaktr.config.schema` holds the dataclasses (the schema and its defaults),
:mod:`~weaktr.config.loading` reads and layers the files and overrides with OmegaConf, and
:mod:`~weaktr.config.validation` turns OmegaConf's complaints into one-line :class:`InputError`.
"""

from weaktr.config.loading import load_config, packaged_configs, save_config
from weaktr.config.schema import (
    CamGenConfig,
    CamTrainConfig,
    CRFOverrides,
    DataConfig,
    DemoDataConfig,
    GCConfig,
    PredictConfig,
    ReportConfig,
    RunConfig,
    SeedConfig,
    SegTrainConfig,
)

__all__ = [
    "CRFOverrides",
    "CamGenConfig",
    "CamTrainConfig",
    "DataConfig",
    "DemoDataConfig",
    "GCConfig",
    "PredictConfig",
    "ReportConfig",
    "RunConfig",
    "SeedConfig",
    "SegTrainConfig",
    "load_config",
    "packaged_configs",
    "save_config",
]
