"""dsno: the DSNO model (U-Net backbone + temporal layers from dsno_kernels), teachers and ODE solvers,
trajectory datasets, training and one-pass sampling."""

from .model import (
    DSNO,
    PRESETS,
    DSNOConfig,
    UNet,
    build_backbone,
    build_model,
    count_parameters,
    load_backbone_weights,
    make_config,
    set_temporal_backend,
    temporal_layers,
)

__all__ = [
    "DSNO",
    "PRESETS",
    "DSNOConfig",
    "UNet",
    "build_backbone",
    "build_model",
    "count_parameters",
    "load_backbone_weights",
    "make_config",
    "set_temporal_backend",
    "temporal_layers",
]
