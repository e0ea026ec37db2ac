"""The torch.distributed setup that `dsno gen-traj` and `dsno train` share.

Under torchrun (WORLD_SIZE, RANK, LOCAL_RANK and MASTER_ADDR/PORT in the environment) `setup` joins the
process group: NCCL when the run is on CUDA, gloo on the CPU. A plain `python`/`dsno` launch is one
process and needs no group. Everything else here is a no-op without a group.

`session()` is the one place a process leaves its group: run the work inside it (`dsno`'s commands and the DDP
test do)."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "current", "setup", "session", "barrier", "all_gather_object", "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def current() -> DistInfo:
    if not _initialized():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """ "auto" is cuda:LOCAL_RANK when CUDA is available, else cpu; "cuda" means cuda:LOCAL_RANK."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"device {device!r}: must be auto, cpu, cuda or cuda:N")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but CUDA is not available here; use --device cpu (or auto)")
        return torch.device("cuda", local_rank)
    if device.startswith("cuda:"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(device[5:]) >= count:
            raise ValueError(
                f"device {device!r} was asked for but this machine has {count} CUDA device(s); "
                f"use --device cpu, cuda or auto"
            )
    return torch.device(device)


def setup(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if WORLD_SIZE > 1 (idempotent); return (info, this rank's device)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    target = resolve_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size > 1 and not _initialized():
        # torch.distributed.nn.functional's collectives take `group=group.WORLD` as a default argument, evaluated
        # when the module is first imported. DDP imports it lazily (through torch._dynamo): after the group exists,
        # those defaults would hold the group for good, and destroy_process_group could not join gloo's threads
        # (see session()). Seen with torch 2.14 wherever nothing imported torch._dynamo first (TRITON_INTERPRET=1).
        importlib.import_module("torch.distributed.nn.functional")  # (a plain import would make `torch` local here)

        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend, init_method="env://", device_id=target if target.type == "cuda" else None
        )
    return current(), target


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Run a block of work that may join the process group (`setup`); leave the group when the block ends, whether
    it returns or raises, while the interpreter is still fully alive.

    Why it matters: gloo's worker threads free the tensors of finished collectives, which can take the GIL. If they
    are still running when Python shuts down, one that reaches for the GIL is exited mid-destructor and the process
    aborts with "terminate called without an active exception" (pytorch/pytorch#190489; an atexit fix in torch
    itself, pytorch/pytorch#179291, was abandoned). destroy_process_group joins those threads only if it drops the
    last reference to the group, and an exception on its way out holds more: its traceback keeps the frames of the
    failed call alive, with the collective's `group` and train()'s DDP model (whose reducer holds the group) in their
    locals. So the frames are cleared first; the traceback still prints."""
    try:
        yield
    except BaseException as error:
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        if _initialized():
            dist.destroy_process_group()


def barrier() -> None:
    if _initialized():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    if not _initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
