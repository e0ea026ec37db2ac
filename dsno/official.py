"""DSNO's own checkpoints (github devzhk/DSNO-pytorch) in this package: detection, loading and the
state_dict mapping both ways.

A checkpoint from DSNO's `save_ckpt` is a dict {"model": state_dict, "ema": state_dict, "args":
argparse.Namespace} (plus "optim" / "scheduler" while training). DSNO's network (TDDPMm) keeps every
layer in one nn.ModuleList, `all_modules`, in forward order; this package's `DSNO` names them. The
order, with this package's module for each entry:

    Linear(nf, temb), Linear(temb, temb)        logsnr_embed.0, logsnr_embed.2
    Linear(num_classes, temb)                    class_embed            (class-conditional only)
    conv3x3                                      conv_in
    per U-Net layer of the encoder, middle and decoder, in order:
      ResidualBlockm                             <layer>.res  (or the Downsample / Upsample block, middle_out)
      MultiheadAttnBlock                         <layer>.attn           (at the attention resolutions)
      TimeConv                                   <layer>.temporal
    GroupNorm, conv3x3                           norm_out, conv_out

Inside the blocks the names differ (GroupNorm_0 -> norm1, Conv_0 -> conv1, Dense_0 -> temb_proj, ...)
and three layouts do:

    NIN (DSNO's 1x1 layer)   W [in, out], b          <-> Conv2d weight [out, in, 1, 1], bias
    attention NINs (qkv)     output channels ordered (head, q/k/v, d) <-> (q/k/v, head, d) here
    TimeConv                 t_conv.weights1 [in, out, K, 2]          <-> weight, same layout

The mapping is exact (a permutation of the values), so `to_official_state_dict` inverts
`from_official_state_dict`. DSNO's `with_nin` temporal layers (off in all its configs) have no
counterpart here and are refused.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .model import DSNO, DSNOConfig, UNetLayer, make_config
from .schedule import LogSNRSchedule, select_time_indices

__all__ = [
    "OFFICIAL_PREFIX",
    "official_layout",
    "from_official_state_dict",
    "to_official_state_dict",
    "is_official_checkpoint",
    "load_official_checkpoint",
    "official_globals",
    "official_time_points",
    "from_official_checkpoint",
    "convert_official_checkpoint",
]

OFFICIAL_PREFIX = "all_modules"

# Per block kind: (DSNO's sub-module name, this package's), for the tensors that only change name.
_RENAMES = {
    "res": (
        ("GroupNorm_0", "norm1"),
        ("Conv_0", "conv1"),
        ("Dense_0", "temb_proj"),
        ("GroupNorm_1", "norm2"),
        ("Conv_1", "conv2"),
    ),
    "attn": (("GroupNorm_0", "norm"),),
}
# Per block kind: (DSNO's NIN name, this package's 1x1 conv), the layers whose weight is transposed.
_NINS = {"res": (("NIN_0", "shortcut"),), "attn": (("NINs", "qkv"), ("NIN_3", "proj_out"))}


def official_layout(model: DSNO) -> list[tuple[str, str]]:
    """(this package's module name, kind) for each entry of DSNO's all_modules, in its order. kind is
    "plain" (same tensor names), "res", "attn" or "temporal"."""
    layout = [("logsnr_embed.0", "plain"), ("logsnr_embed.2", "plain")]
    if model.class_embed is not None:
        layout.append(("class_embed", "plain"))
    layout.append(("conv_in", "plain"))

    def add_layer(name: str, layer: nn.Module) -> None:
        if isinstance(layer, UNetLayer):
            layout.append((f"{name}.res", "res"))
            if layer.attn is not None:
                layout.append((f"{name}.attn", "attn"))
            if layer.temporal is not None:
                layout.append((f"{name}.temporal", "temporal"))
        else:  # a Downsample / Upsample residual block
            layout.append((name, "res"))

    for index, layer in enumerate(model.encoder):
        add_layer(f"encoder.{index}", layer)
    add_layer("middle", model.middle)
    layout.append(("middle_out", "res"))
    for index, layer in enumerate(model.decoder):
        add_layer(f"decoder.{index}", layer)
    layout += [("norm_out", "plain"), ("conv_out", "plain")]
    return layout


def _model_for(model_or_config: DSNO | DSNOConfig | str | Mapping[str, Any]) -> DSNO:
    if isinstance(model_or_config, DSNO):
        return model_or_config
    with torch.device("meta"):  # the structure only: no memory, no initialisation cost
        return DSNO(make_config(model_or_config))


def _heads(model: DSNO, name: str) -> int:
    return model.get_submodule(name).num_heads


def _qkv_to_ours(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of the qkv projection (first dim 3C) from (head, q/k/v, d) order to (q/k/v, head, d)."""
    rest = tensor.shape[1:]
    return tensor.reshape(heads, 3, -1, *rest).transpose(0, 1).reshape(-1, *rest)


def _qkv_to_official(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    rest = tensor.shape[1:]
    return tensor.reshape(3, heads, -1, *rest).transpose(0, 1).reshape(-1, *rest)


def _key_pairs(model: DSNO) -> list[tuple[str, str, str, str]]:
    """(official key, our key, module name, conversion) for every tensor; conversion is "same", "nin_weight"
    (W [in, out] <-> weight [out, in, 1, 1]), "qkv_weight" / "qkv_bias" (also reordered)."""
    ours = model.state_dict()
    pairs = []
    for index, (name, kind) in enumerate(official_layout(model)):
        official = f"{OFFICIAL_PREFIX}.{index}"
        if kind == "plain":
            for tensor in ("weight", "bias"):
                pairs.append((f"{official}.{tensor}", f"{name}.{tensor}", name, "same"))
        elif kind == "temporal":
            pairs.append((f"{official}.t_conv.weights1", f"{name}.weight", name, "same"))
        else:
            for theirs, mine in _RENAMES[kind]:
                for tensor in ("weight", "bias"):
                    pairs.append((f"{official}.{theirs}.{tensor}", f"{name}.{mine}.{tensor}", name, "same"))
            for theirs, mine in _NINS[kind]:
                if f"{name}.{mine}.weight" not in ours:  # no shortcut when the channel count is kept
                    continue
                qkv = mine == "qkv"
                pairs.append(
                    (f"{official}.{theirs}.W", f"{name}.{mine}.weight", name, "qkv_weight" if qkv else "nin_weight")
                )
                pairs.append((f"{official}.{theirs}.b", f"{name}.{mine}.bias", name, "qkv_bias" if qkv else "same"))
    return pairs


def _check_keys(given: Mapping[str, Any], expected: list[str], what: str) -> None:
    missing = [key for key in expected if key not in given]
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        hint = ""
        if any(key.endswith((".nin.W", ".nin.b")) for key in unexpected):
            hint = " (DSNO's with_nin temporal layers are not supported)"
        raise KeyError(
            f"{what} does not match the model: {len(missing)} missing, e.g. {missing[:5]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:5]}{hint}"
        )


def _strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    # a state_dict saved from a DistributedDataParallel wrapper
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


def from_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], model_or_config: DSNO | DSNOConfig | str | Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """A DSNO (TDDPMm) state_dict -> this package's `DSNO` state_dict for the same architecture (a model,
    a DSNOConfig, a preset name or a dict of DSNOConfig fields). Raises KeyError / ValueError naming the
    tensors when the state_dict is not of that architecture."""
    model = _model_for(model_or_config)
    state_dict = _strip_module_prefix(state_dict)
    pairs = _key_pairs(model)
    _check_keys(state_dict, [official for official, *_ in pairs], "the DSNO state_dict")
    target = model.state_dict()
    result = {}
    for official, mine, name, conversion in pairs:
        tensor = state_dict[official]
        if conversion == "nin_weight" or conversion == "qkv_weight":
            if tensor.dim() != 2:
                raise ValueError(f"{official}: expected a NIN weight [in, out], got shape {tuple(tensor.shape)}")
            tensor = tensor.t()[:, :, None, None]
        if tensor.shape != target[mine].shape:
            raise ValueError(
                f"{official}: shape {tuple(tensor.shape)} does not fit {mine} "
                f"{tuple(target[mine].shape)} (is it the same configuration?)"
            )
        if conversion.startswith("qkv"):
            tensor = _qkv_to_ours(tensor, _heads(model, name))
        result[mine] = tensor.contiguous()
    return result


def to_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], model_or_config: DSNO | DSNOConfig | str | Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """This package's `DSNO` state_dict -> DSNO's (TDDPMm) layout: the inverse of from_official_state_dict."""
    model = _model_for(model_or_config)
    pairs = _key_pairs(model)
    _check_keys(state_dict, [mine for _, mine, *_ in pairs], "the state_dict")
    target = model.state_dict()
    result = {}
    for official, mine, name, conversion in pairs:
        tensor = state_dict[mine]
        if tensor.shape != target[mine].shape:
            raise ValueError(f"{mine}: shape {tuple(tensor.shape)}, the model's is {tuple(target[mine].shape)}")
        if conversion.startswith("qkv"):
            tensor = _qkv_to_official(tensor, _heads(model, name))
        if conversion in ("nin_weight", "qkv_weight"):
            tensor = tensor[:, :, 0, 0].t()
        result[official] = tensor.contiguous()
    return result


def is_official_checkpoint(state: Any) -> bool:
    """True for a dict written by DSNO's save_ckpt: "ema" and "model" state_dicts of all_modules.* tensors."""
    if not isinstance(state, Mapping) or not isinstance(state.get("ema"), Mapping):
        return False
    keys = list(_strip_module_prefix(state["ema"]))
    return bool(keys) and all(key.startswith(OFFICIAL_PREFIX + ".") for key in keys)


def official_globals():
    """Context in which torch.load(weights_only=True) also accepts argparse.Namespace: DSNO's
    save_ckpt stores its training script's arguments (strings, numbers, booleans) as one."""
    return torch.serialization.safe_globals([argparse.Namespace])


def load_official_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A DSNO checkpoint file, loaded with weights_only=True (argparse.Namespace is the one class allowed
    besides tensors and plain data); one-line ValueError / FileNotFoundError for a bad file."""
    from .checkpoint import load_tensor_file

    with official_globals():
        state = load_tensor_file(path, "DSNO checkpoint", map_location)
    if not is_official_checkpoint(state):
        raise ValueError(f"{path} is not a checkpoint of DSNO's code (no 'ema' state_dict of all_modules.* tensors)")
    return state


def official_time_points(schedule: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, logsnr) [M] of the output time points as DSNO's generate/train scripts compute them: in
    float32, t = linspace(1, epsilon, num_steps + 1)[indices], logsnr = -2 log tan(a t + b). The
    `schedule` mapping is a config's schedule section (t_min is DSNO's data.epsilon)."""
    indices = select_time_indices(int(schedule["num_steps"]), int(schedule["num_points"]), schedule["spacing"])
    t = torch.linspace(1.0, float(schedule["t_min"]), int(schedule["num_steps"]) + 1, dtype=torch.float32)[indices]
    logsnr = LogSNRSchedule(float(schedule["logsnr_min"]), float(schedule["logsnr_max"])).logsnr(t)
    return t, logsnr


def _official_step(state: Mapping[str, Any]) -> int:
    """The training step of a DSNO checkpoint, from its lr scheduler's state (0 where it has none)."""
    schedulers = state.get("scheduler", {}).get("_schedulers") if isinstance(state.get("scheduler"), Mapping) else None
    if schedulers and isinstance(schedulers[0], Mapping) and isinstance(schedulers[0].get("last_epoch"), int):
        return schedulers[0]["last_epoch"]
    return 0


def from_official_checkpoint(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A loaded DSNO checkpoint -> this package's checkpoint dict (model, ema, config, time points, ...)
    for the resolved `config` of its preset (the architecture, schedule and data shape come from it).
    "model" falls back to the EMA weights where DSNO's file has none."""
    from .checkpoint import CHECKPOINT_VERSION
    from .model import build_model_from_config

    if not is_official_checkpoint(state):
        raise ValueError("not a checkpoint of DSNO's code (no 'ema' state_dict of all_modules.* tensors)")
    with torch.device("meta"):
        model = build_model_from_config(config["model"])
    if not isinstance(model, DSNO):
        raise ValueError(
            f"model.name={config['model']['name']!r} does not build a dsno.model.DSNO, "
            f"which is what DSNO's checkpoints hold"
        )
    ema = from_official_state_dict(state["ema"], model)
    raw = from_official_state_dict(state["model"], model) if isinstance(state.get("model"), Mapping) else ema
    t, logsnr = official_time_points(config["schedule"])
    num_classes = config["data"]["num_classes"] or None
    if (num_classes or 0) != model.config.num_classes:
        raise ValueError(
            f"data.num_classes={config['data']['num_classes']} but the model has {model.config.num_classes} classes"
        )
    return {
        "version": CHECKPOINT_VERSION,
        "step": _official_step(state),
        "model": raw,
        "ema": ema,
        "config": dict(config),
        "logsnr": logsnr.tolist(),
        "t": t.tolist(),
        "noise_shape": list(config["data"]["shape"]),
        "num_classes": num_classes,
    }


def convert_official_checkpoint(
    path: str | os.PathLike, config: Mapping[str, Any], out: str | os.PathLike
) -> dict[str, Any]:
    """Read DSNO's checkpoint at `path`, write this package's checkpoint to `out` (atomically; an
    existing `out` is refused), for the resolved `config` of its preset. Returns the written dict."""
    from .checkpoint import save_checkpoint

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --out or remove it first")
    state = load_official_checkpoint(path)
    converted = from_official_checkpoint(state, config)
    save_checkpoint(converted, out)
    return converted
