"""Teacher trajectory datasets: generation (`dsno gen-traj`), on-disk format, and the training Dataset.

Sample i of a dataset is fixed by (seed, i) alone: its noise (and class label, for a class-conditional
teacher) are drawn from a generator seeded with SeedSequence([seed, i]), then the teacher's ODE is
solved from that noise and the states at the M output time points are kept. So any subset of samples
can be (re)generated on any rank, in any order, and come out the same.

Layout of a dataset folder:

    manifest.json                 what was generated and how (spec below), "complete" when all shards are
    shard-00000.noise.npy         [n, C, H, W]      the teacher's starting noise
    shard-00000.traj.npy          [n, M, C, H, W]   the states at the M time points
    shard-00000.labels.npy        [n] int64         class labels (class-conditional teachers only)
    shard-00000.json              written last: marks shard 0 complete
    ...

Shard s holds samples [s * shard_size, min(N, (s + 1) * shard_size)). Its arrays are filled through a
memory map under a temporary name (preallocated, so a full disk is an ENOSPC error rather than a
SIGBUS), fsync'ed and renamed into place, then its marker is written (also by temp + rename). The
marker records each file's size and a cheap checksum (CRC-32 of up to 8 evenly spaced 16 KiB blocks).
A crash leaves at worst temporary files (removed by the next run) or arrays without a marker; both are
redone on resume, which skips exactly the shards whose marker and files agree, so nothing is
duplicated or lost; a shard whose file was truncated or changed since is regenerated. Opening a
dataset checks the same sizes and checksums, so a damaged file is named at once, not hours later.
Under torchrun, shard s belongs to rank s % world_size, each rank writes only its own files, and
rank 0 folds the markers into the manifest once every shard is done.
"""

from __future__ import annotations

import bisect
import errno
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .checkpoint import atomic_write_text, check_output_dir, fsync_directory, remove_stale_temporaries
from .config import validate_config
from .schedule import LogSNRSchedule, output_time_points, time_grid
from .teachers import SOLVERS, Teacher, build_teacher, solve

__all__ = [
    "TrajectorySpec",
    "sample_noise",
    "generate",
    "finalize_manifest",
    "read_manifest",
    "TrajectoryDataset",
    "spec_from_config",
    "generate_from_config",
    "resume_note",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
STORAGE_DTYPES = ("float32", "float16")


@dataclass
class TrajectorySpec:
    """Everything that determines a dataset's contents; a resumed run must match it exactly."""

    shape: list[int]
    num_samples: int
    shard_size: int = 10_000
    seed: int = 0
    solver: str = "ddim"
    num_steps: int = 512
    num_points: int = 4
    spacing: str = "quadratic"
    t_min: float = 1e-5
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    record: str = "x0"
    num_classes: int | None = None
    dtype: str = "float32"
    teacher: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.shape = [int(v) for v in self.shape]
        if self.num_samples < 1 or self.shard_size < 1:
            raise ValueError("num_samples and shard_size must be positive")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {self.dtype!r}")
        if self.record not in ("x0", "xt"):
            raise ValueError(f"record must be 'x0' or 'xt', got {self.record!r}")
        self.time_points()  # raises if the points do not fit the grid, before any file or rank is touched

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(self.num_samples, start + self.shard_size)

    def time_points(self):
        return output_time_points(
            self.num_steps, self.num_points, self.spacing, self.t_min, LogSNRSchedule(self.logsnr_min, self.logsnr_max)
        )

    def logsnr_grid(self) -> torch.Tensor:
        return LogSNRSchedule(self.logsnr_min, self.logsnr_max).logsnr(time_grid(self.num_steps, self.t_min))


def sample_noise(
    indices: Sequence[int], shape: Sequence[int], seed: int, num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The float32 noise [n, *shape] (and int64 labels [n]) of samples `indices`, each drawn from its
    own generator seeded by SeedSequence([seed, index]), so they do not depend on batching or rank."""
    noise = torch.empty(len(indices), *shape)
    labels = torch.empty(len(indices), dtype=torch.int64) if num_classes else None
    generator = torch.Generator()
    for row, index in enumerate(indices):
        state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
        generator.manual_seed(int(state[0]) << 32 | int(state[1]))
        noise[row] = torch.randn(*shape, generator=generator)
        if labels is not None:
            labels[row] = torch.randint(num_classes, (), generator=generator)
    return noise, labels


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def _marker_path(root: Path, shard: int) -> Path:
    return root / f"{_shard_name(shard)}.json"


def _manifest_for(spec: TrajectorySpec, batch_size: int) -> dict[str, Any]:
    points = spec.time_points()
    return {
        "format_version": FORMAT_VERSION,
        "spec": asdict(spec),
        "time_indices": points.indices,
        "t": points.t.tolist(),
        "logsnr": points.logsnr.tolist(),
        "noise_shape": spec.shape,
        "trajectory_shape": [spec.num_points, *spec.shape],
        "num_shards": spec.num_shards,
        "batch_size": batch_size,
        "seeding": "sample i: torch.Generator seeded with SeedSequence([seed, i]).generate_state(2, uint32) "
        "as one 64-bit int; randn(shape) then randint(num_classes)",
        "complete": False,
        "shards": [],
    }


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            errno.ENOENT,
            f"no {MANIFEST}: not a trajectory dataset (make one with "
            f"`dsno gen-traj`, or point to the folder that holds it)",
            str(root),
        )
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}): the dataset's manifest is damaged; regenerate it "
            f"with `dsno gen-traj` into a new folder"
        ) from None


def _check_same_spec(existing: dict[str, Any], spec: TrajectorySpec, root: Path) -> None:
    wanted = json.loads(json.dumps(asdict(spec)))  # normalise tuples/ints the way JSON stores them
    differences = {
        key: (existing["spec"].get(key), value) for key, value in wanted.items() if existing["spec"].get(key) != value
    }
    if differences:
        listed = ", ".join(f"{k}: on disk {a!r}, now {b!r}" for k, (a, b) in differences.items())
        raise ValueError(
            f"{root} holds a different dataset ({listed}); resume with the same settings or write to another folder"
        )


def _completed_shards(root: Path, spec: TrajectorySpec) -> set[int]:
    return {s for s in range(spec.num_shards) if _marker_path(root, s).is_file()}


_CHECKSUM_BLOCKS, _CHECKSUM_BLOCK = 8, 16 * 1024


def _checksum(path: Path) -> str:
    """CRC-32 of up to 8 evenly spaced 16 KiB blocks of the file (all of it when smaller): cheap to
    compute for a large dataset, and it changes when a file is overwritten, zeroed or shifted."""
    size = path.stat().st_size
    crc = 0
    with open(path, "rb") as handle:
        if size <= _CHECKSUM_BLOCKS * _CHECKSUM_BLOCK:
            crc = zlib.crc32(handle.read())
        else:
            for block in range(_CHECKSUM_BLOCKS):
                handle.seek((size - _CHECKSUM_BLOCK) * block // (_CHECKSUM_BLOCKS - 1))
                crc = zlib.crc32(handle.read(_CHECKSUM_BLOCK), crc)
    return f"{crc:08x}"


def _shard_problem(root: Path, marker: dict[str, Any]) -> str | None:
    """What is wrong with a finished shard's files (missing, wrong size, wrong checksum), or None."""
    for key, name in marker["files"].items():
        path = root / name
        if not path.is_file():
            return f"{path} is missing"
        if "bytes" not in marker:  # written before sizes were recorded
            continue
        size = path.stat().st_size
        if size != marker["bytes"][key]:
            return f"{path} has {size} bytes, {marker['bytes'][key]} were written"
        if _checksum(path) != marker["crc32"][key]:
            return f"{path} has changed since it was written (checksum)"
    return None


def _verified_shards(root: Path, spec: TrajectorySpec, shards: Sequence[int]) -> set[int]:
    """Those of `shards` that are finished and intact; the marker of a damaged one is removed (with a note),
    so that it is generated again."""
    done = set()
    for shard in shards:
        path = _marker_path(root, shard)
        if not path.is_file():
            continue
        try:
            problem = _shard_problem(root, json.loads(path.read_text()))
        except (ValueError, KeyError):
            problem = f"{path} is damaged"
        if problem is None:
            done.add(shard)
        else:
            print(f"gen-traj: {problem}; regenerating {_shard_name(shard)}")
            path.unlink()
    return done


def _preallocate(path: Path) -> None:
    """Reserve the disk blocks of a just-created (sparse) file, so running out of space fails here with
    ENOSPC instead of as a SIGBUS when the memory map is written."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "rb+") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, path.stat().st_size)
        except OSError as error:
            if error.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # the filesystem cannot; write as before
                return
            raise OSError(error.errno, error.strerror, str(path)) from None


def _write_shard(
    root: Path,
    shard: int,
    spec: TrajectorySpec,
    teacher: Teacher,
    *,
    batch_size: int,
    device: torch.device,
    compute_dtype: torch.dtype,
    progress,
) -> None:
    start, stop = spec.shard_range(shard)
    count = stop - start
    points = spec.time_points()
    grid = spec.logsnr_grid()
    name = _shard_name(shard)
    arrays = {"noise": ((count, *spec.shape), spec.dtype), "traj": ((count, spec.num_points, *spec.shape), spec.dtype)}
    if spec.num_classes:
        arrays["labels"] = ((count,), "int64")
    final = {key: root / f"{name}.{key}.npy" for key in arrays}
    temporary = {key: root / f"{name}.{key}.npy.tmp" for key in arrays}
    maps = {}
    for key, (shape, dtype) in arrays.items():
        maps[key] = np.lib.format.open_memmap(temporary[key], mode="w+", dtype=dtype, shape=shape)
        _preallocate(temporary[key])
    for batch_start in range(start, stop, batch_size):
        indices = range(batch_start, min(stop, batch_start + batch_size))
        noise, labels = sample_noise(indices, spec.shape, spec.seed, spec.num_classes)
        states = solve(
            teacher,
            noise.to(device, compute_dtype),
            grid,
            points.indices,
            solver=spec.solver,
            record=spec.record,
            y=None if labels is None else labels.to(device),
        )
        rows = slice(batch_start - start, batch_start - start + len(indices))
        maps["noise"][rows] = noise.numpy()
        maps["traj"][rows] = states.float().cpu().numpy()
        if labels is not None:
            maps["labels"][rows] = labels.numpy()
        progress.update(len(indices))
    for array in maps.values():
        array.flush()
    maps.clear()  # closes the memory maps
    for key in arrays:
        with open(temporary[key], "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary[key], final[key])
    fsync_directory(root)
    marker = {
        "shard": shard,
        "start": start,
        "count": count,
        "files": {k: p.name for k, p in final.items()},
        "bytes": {k: p.stat().st_size for k, p in final.items()},
        "crc32": {k: _checksum(p) for k, p in final.items()},
    }
    atomic_write_text(_marker_path(root, shard), json.dumps(marker, indent=1))


def generate(
    teacher: Teacher,
    spec: TrajectorySpec,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    compute_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    max_new_shards: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> dict[str, Any]:
    """Generate (or resume generating) the dataset `spec` into out_dir; returns the manifest.

    rank/world_size default to the torch.distributed process group (1 process without one). Each rank
    writes the missing shards s with s % world_size == rank. max_new_shards stops after that many new
    shards on this rank (for time-limited jobs: rerun to continue). The manifest becomes complete when
    a run finds every shard done (rank 0 writes it, after a barrier when a process group exists)."""
    from tqdm import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_new_shards is not None and (not isinstance(max_new_shards, int) or max_new_shards < 1):
        raise ValueError(f"max_new_shards must be None or a positive int, got {max_new_shards!r}")
    root = Path(out_dir)
    info = distributed.current()
    rank = info.rank if rank is None else rank
    world_size = info.world_size if world_size is None else world_size
    device = torch.device(device)
    if info.is_main:
        check_output_dir(root, "traj.out")
        root.mkdir(parents=True, exist_ok=True)
        if world_size == 1 or info.distributed:  # no other writer yet (the others wait at the barrier below)
            remove_stale_temporaries(root, "shard-*.tmp")  # a killed run's unfinished arrays and markers
            remove_stale_temporaries(root, ".*.tmp")
        if (root / MANIFEST).is_file():
            _check_same_spec(read_manifest(root), spec, root)
        else:
            atomic_write_text(root / MANIFEST, json.dumps(_manifest_for(spec, batch_size), indent=1))
    distributed.barrier()
    _check_same_spec(read_manifest(root), spec, root)

    assigned = [s for s in range(spec.num_shards) if s % world_size == rank]
    done = _verified_shards(root, spec, assigned)
    mine = [s for s in assigned if s not in done]
    if max_new_shards is not None:
        mine = mine[:max_new_shards]
    total = sum(spec.shard_range(s)[1] - spec.shard_range(s)[0] for s in mine)
    with tqdm(
        total=total, unit="sample", desc=f"gen-traj rank {rank}", disable=not progress or rank != 0, dynamic_ncols=True
    ) as bar:
        for shard in mine:
            try:
                _write_shard(
                    root,
                    shard,
                    spec,
                    teacher,
                    batch_size=batch_size,
                    device=device,
                    compute_dtype=compute_dtype,
                    progress=bar,
                )
            except OSError as error:  # e.g. disk full: free the space the unfinished shard took, name it
                remove_stale_temporaries(root, f"{_shard_name(shard)}.*.tmp")
                if error.filename is None:
                    error = OSError(error.errno, error.strerror, str(root / _shard_name(shard)))
                raise error from None
    distributed.barrier()
    if rank == 0:
        finalize_manifest(root)
    distributed.barrier()
    return read_manifest(root)


def finalize_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """List the completed shards in the manifest and mark it complete if all are there."""
    root = Path(root)
    manifest = read_manifest(root)
    spec = TrajectorySpec(**manifest["spec"])
    done = sorted(_completed_shards(root, spec))
    manifest["shards"] = [json.loads(_marker_path(root, s).read_text()) for s in done]
    manifest["complete"] = len(done) == spec.num_shards
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def spec_from_config(config: dict[str, Any], teacher_info: dict[str, Any]) -> TrajectorySpec:
    schedule, traj = config["schedule"], config["traj"]
    return TrajectorySpec(
        shape=config["data"]["shape"],
        num_samples=traj["num_samples"],
        shard_size=traj["shard_size"],
        seed=traj["seed"],
        solver=traj["solver"],
        num_steps=schedule["num_steps"],
        num_points=schedule["num_points"],
        spacing=schedule["spacing"],
        t_min=schedule["t_min"],
        logsnr_min=schedule["logsnr_min"],
        logsnr_max=schedule["logsnr_max"],
        record=traj["record"],
        num_classes=config["data"]["num_classes"],
        dtype=traj["dtype"],
        teacher=teacher_info,
    )


def generate_from_config(config: dict[str, Any], *, progress: bool = True) -> dict[str, Any]:
    """`dsno gen-traj`: build the configured teacher and generate (or resume) traj.out; returns the manifest."""
    config = validate_config(config)
    check_output_dir(config["traj"]["out"], "traj.out")
    _, device = distributed.setup(config["traj"]["device"])
    teacher, teacher_info = build_teacher(config, device)
    spec = spec_from_config(config, teacher_info)
    return generate(
        teacher,
        spec,
        config["traj"]["out"],
        batch_size=config["traj"]["batch_size"],
        device=device,
        progress=progress,
        max_new_shards=config["traj"]["max_new_shards"],
    )


def resume_note(config: dict[str, Any]) -> str:
    """Where a rerun of generate_from_config(config) starts: the shards finished so far are kept."""
    traj = config["traj"]
    total = -(-traj["num_samples"] // traj["shard_size"])
    finished = sum(_marker_path(Path(traj["out"]), shard).is_file() for shard in range(total))
    if not finished:
        return "no shard was finished yet: the same command starts again"
    return (
        f"{finished} of {total} shards are finished and kept: the same command generates the other {total - finished}"
    )


class TrajectoryDataset(torch.utils.data.Dataset):
    """(noise, trajectory[, label]) pairs from a generated dataset, read through memory maps.

    Item i is a dict {"noise": [C, H, W], "trajectory": [M, C, H, W]} (float32) plus "label" (int64) for
    class-conditional data. `logsnr` [M] and `t` [M] are the time points the trajectory states are at."""

    def __init__(self, root: str | os.PathLike, *, allow_incomplete: bool = False):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.spec = TrajectorySpec(**self.manifest["spec"])
        if not self.manifest["complete"] and not allow_incomplete:
            finished = len(_completed_shards(self.root, self.spec))
            raise ValueError(
                f"{root} is incomplete ({finished} of {self.spec.num_shards} shards finished): "
                f"finish it by rerunning `dsno gen-traj` with the same settings"
            )
        self.shards = sorted(self.manifest["shards"], key=lambda s: s["start"])
        for shard in self.shards:
            problem = _shard_problem(self.root, shard)
            if problem is not None:
                raise ValueError(f"{problem}: rerun `dsno gen-traj` with the same settings to regenerate it")
        self.offsets = np.cumsum([0] + [s["count"] for s in self.shards]).tolist()
        self.logsnr = torch.tensor(self.manifest["logsnr"], dtype=torch.float64)
        self.t = torch.tensor(self.manifest["t"], dtype=torch.float64)
        self._arrays: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.offsets[-1]

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes

    def _shard_arrays(self, position: int) -> dict[str, np.ndarray]:
        if position not in self._arrays:
            files = self.shards[position]["files"]
            self._arrays[position] = {key: np.load(self.root / name, mmap_mode="r") for key, name in files.items()}
        return self._arrays[position]

    def final_states(self) -> np.ndarray:
        """[N, C, H, W] float32: every sample's state at the last time point (the teacher's sample), in order."""
        return np.concatenate(
            [np.asarray(self._shard_arrays(i)["traj"][:, -1], dtype=np.float32) for i in range(len(self.shards))]
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        position = bisect.bisect_right(self.offsets, index) - 1
        row = index - self.offsets[position]
        arrays = self._shard_arrays(position)
        item = {
            "noise": torch.from_numpy(np.array(arrays["noise"][row], dtype=np.float32)),
            "trajectory": torch.from_numpy(np.array(arrays["traj"][row], dtype=np.float32)),
        }
        if "labels" in arrays:
            item["label"] = torch.tensor(int(arrays["labels"][row]))
        return item

    def __getstate__(self):
        # memory maps are reopened in each DataLoader worker rather than pickled
        return {**self.__dict__, "_arrays": {}}
