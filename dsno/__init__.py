"""dsno: the DSNO model (U-Net backbone + temporal layers from dsno_kernels), teachers and ODE solvers,
trajectory datasets, training and one-pass sampling.

Names are imported lazily, so `dsno --help` does not load torch extensions it does not need."""

import importlib

_EXPORTS = {
    "model": [
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
    ],
    "schedule": ["LogSNRSchedule", "alpha_sigma", "output_time_points", "select_time_indices", "time_grid"],
    "teachers": ["Teacher", "GaussianMixtureTeacher", "NetworkTeacher", "as_teacher", "solve"],
    "trajectories": ["TrajectorySpec", "TrajectoryDataset", "generate"],
    "train": ["train"],
    "sample": ["sample", "load_sampler"],
    "config": ["load_config"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'dsno' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
