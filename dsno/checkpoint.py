"""Files on disk: atomic writes, output-folder checks, checkpoints as plain data, RNG state for resume.

A file is written to a temporary file in the same folder, flushed and fsync'ed, then moved over the
old one with os.replace (atomic on POSIX), and the folder is fsync'ed so the rename itself is
durable. A crash at any moment leaves either the previous file or the new one, never a torn file.
`AtomicOutputs` does the same for a set of files: all are written first and renamed only when every
one succeeded, so a failed run never replaces (or half-replaces) a good earlier output.

Checkpoints hold tensors and plain data only (dicts, lists, numbers, strings) and are loaded with
torch.load(weights_only=True): a file that needs anything else is refused, so a crafted checkpoint
cannot run code.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT",
    "METRICS",
    "CHECKPOINT_VERSION",
    "atomic_write_bytes",
    "atomic_write_text",
    "AtomicOutputs",
    "fsync_directory",
    "check_output_dir",
    "remove_stale_temporaries",
    "save_checkpoint",
    "load_checkpoint",
    "checked_checkpoint",
    "load_tensor_file",
    "load_model_state",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT = "checkpoint.pt"  # a training run's latest state, in train.out
METRICS = "metrics.jsonl"  # a training run's log, in train.out
CHECKPOINT_VERSION = 2  # 2: plain data only (version 1 held numpy objects)
_TEMPORARY = ".tmp"  # suffix of every temporary file this package writes


def fsync_directory(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_mode() -> int:
    """0666 minus the umask: what open() gives a new file (mkstemp gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _with_filename(error: OSError, path: Path) -> OSError:
    """The same OSError naming `path` (a failed write() names no file)."""
    if error.filename is not None:
        return error
    return type(error)(error.errno, error.strerror or str(error), str(path))


def _temporary_file(path: Path):
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMPORARY, dir=path.parent)
    os.fchmod(fd, _file_mode())
    return fd, temporary


def _write_temporary(path: Path, write) -> str:
    """Write to a fresh temporary file beside `path` (flushed, fsync'ed); return its name."""
    fd, temporary = _temporary_file(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as error:
        os.unlink(temporary)
        interrupt = _interrupt_behind(error)
        if interrupt is not None and interrupt is not error:
            # Ctrl-C inside torch.save: its zip writer then fails to close ("unexpected pos ..."), and that
            # RuntimeError would hide the interrupt behind a traceback
            raise interrupt from None
        if isinstance(error, OSError):
            raise _with_filename(error, path) from error
        raise
    return temporary


def _interrupt_behind(error: BaseException | None) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt that `error` was raised while handling, if any (or `error` itself)."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return error
        error = error.__context__
    return None


def _atomic_write(path: str | os.PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _write_temporary(path, write)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


class AtomicOutputs:
    """Write several files into `folder`, all or nothing.

        with AtomicOutputs(out) as outputs:
            outputs.write("a.npy", lambda handle: np.save(handle, a))
            outputs.write("b.png", lambda handle: handle.write(data))

    Each write goes to a temporary file; only when the block finishes without an exception are they
    renamed into place (one rename each, back to back). On an exception every temporary is removed and
    the files already in `folder` are untouched."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._pending: list[tuple[str, Path]] = []

    def __enter__(self) -> AtomicOutputs:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, name: str, write) -> Path:
        path = self.folder / name
        self._pending.append((_write_temporary(path, write), path))
        return path

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            for temporary, _ in self._pending:
                if os.path.exists(temporary):
                    os.unlink(temporary)
            return
        for temporary, path in self._pending:
            os.replace(temporary, path)
        fsync_directory(self.folder)


def remove_stale_temporaries(folder: str | os.PathLike, pattern: str = f"*{_TEMPORARY}") -> list[Path]:
    """Delete temporary files a killed run left in `folder` (only call it when no other run writes there)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.glob(pattern) if p.is_file())
    for path in stale:
        path.unlink()
    return stale


def check_output_dir(path: str | os.PathLike, key: str) -> None:
    """Refuse, before any work, an output folder that is a file, sits under a file, or cannot be written.

    `key` names the setting the folder came from, for the message."""
    path = Path(path)
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, which is a file"
        raise NotADirectoryError(errno.ENOTDIR, f"{key}: the output folder {where}; choose a folder path", str(path))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{key}: cannot write into {existing}; choose a writable folder", str(path))


# --------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save(state) to path atomically; state must be tensors and plain data (see load_checkpoint)."""
    _atomic_write(path, lambda handle: torch.save(state, handle))


_ZIP, _PICKLE = b"PK\x03\x04", b"\x80"  # how torch.save's files begin: a zip archive (or, before torch 1.6, a pickle)


def load_tensor_file(path: str | os.PathLike, what: str, map_location: str | torch.device = "cpu") -> Any:
    """torch.load(path, weights_only=True), with a one-line ValueError saying in words what is wrong with the file.

    `what` says what the file should be ("checkpoint", "teacher weights (teacher.weights)", ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, f"{what} not found", str(path))
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        raise ValueError(f"{path}: {what} is empty (0 bytes); restore it or write it again")
    if not head.startswith((_ZIP, _PICKLE)):
        raise ValueError(
            f"{path}: {what} is not a file written by torch.save: it begins with {head!r}, where torch.save "
            f"writes a zip archive (b'PK...'); give the file that dsno or torch.save wrote"
        )
    try:
        with warnings.catch_warnings():  # about foreign pickle protocols: the error below says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error) and "numpy" in str(error) and what == "checkpoint":
            raise ValueError(
                f"{path}: a checkpoint of an older dsno (format 1, with numpy objects), which this "
                f"version does not load; sample or resume it with the dsno that wrote it"
            ) from error
        if "Unsupported global" in str(error):  # it names a class or function to call: code
            raise ValueError(
                f"{path}: refused to load {what}: it holds Python objects other than tensors and "
                f"plain data, and loading them could run code; use a file written by dsno or "
                f"torch.save(model.state_dict())"
            ) from error
        raise ValueError(_damaged(path, what, size, head)) from error
    except Exception as error:  # the reader fails in many ways on a damaged file (RuntimeError, EOFError, ...)
        raise ValueError(_damaged(path, what, size, head)) from error


def _damaged(path: Path, what: str, size: int, head: bytes) -> str:
    form = "zip archive" if head.startswith(_ZIP) else "pickle"
    return (
        f"{path}: {what} is truncated or damaged: it begins as torch.save's {form} but its {size:,} bytes "
        f"cannot be read as one; restore it or write it again"
    )


_CHECKPOINT_KEYS = ("version", "step", "model", "ema", "config", "logsnr", "t", "noise_shape", "num_classes")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A dsno training checkpoint (weights_only load; one-line ValueError for garbage, a truncated file,
    code inside, or a file that is not a dsno checkpoint)."""
    return checked_checkpoint(load_tensor_file(path, "checkpoint", map_location), path)


def checked_checkpoint(state: Any, path: str | os.PathLike) -> dict[str, Any]:
    """`state` (loaded from `path`) if it is a dsno training checkpoint of this format; ValueError otherwise."""
    missing = [key for key in _CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(
            f"{path}: not a dsno training checkpoint (no {', '.join(missing)}); give the "
            f"{CHECKPOINT} of a `dsno train` run"
        )
    if state["version"] != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format {state['version']}, this dsno reads {CHECKPOINT_VERSION}; "
            f"use the dsno version that wrote it"
        )
    return state


def load_model_state(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    model_config: Mapping[str, Any] | None = None,
) -> None:
    """model.load_state_dict(state_dict), with a one-line ValueError when the weights are of another model."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        built = f" (built from model config {dict(model_config)})" if model_config is not None else ""
        raise ValueError(
            f"{path}: its weights do not fit the model{built}: {detail[:300]}; use the model "
            f"settings the checkpoint was trained with"
        ) from error


# --------------------------------------------------------------------------------------------------
# Random-number state, as plain data (tensors, lists, numbers) so checkpoints load with weights_only=True


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch CPU and CUDA generator states."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
