"""The `dsno` command: gen-traj, train, sample, eval, demo, config. The whole parser is built here.

Settings come from a YAML config (`-c cifar10`, `-c imagenet64`, `-c tiny`, or a file that starts
from one with `base: cifar10`), then `--set section.key=value` overrides, then the explicit flags of
each command (which are shorthands for config keys and win over --set). `dsno config -c NAME` prints
the resolved config. Multi-GPU: `torchrun --nproc_per_node 8 -m dsno train -c cifar10` (gen-traj too).

`eval` and `demo` are provided by the modules dsno.metrics and dsno.demo: each must define
`main(args) -> int | None`, and may define `add_arguments(parser)` to add its own options.

Every command takes `--threads` (torch's CPU threads; see THREADS) and `--debug`.

Errors are one line `dsno COMMAND: error: ...`: a bad option or setting names it, the value and what is
allowed (exit 2); any other expected failure (missing or damaged file, full disk, unusable device,
mismatched checkpoint) names the file or setting (exit 1). `--debug` or DSNO_DEBUG=1 shows the traceback
instead. Ctrl-C says what a rerun of the same command starts from (exit 130).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .config import ConfigError, dump_config, load_config, presets, set_value, validate_config

__all__ = ["build_parser", "main", "THREADS"]

# Default torch CPU threads of every command. Measured on a 2-core machine shared with other jobs
# (benchmarks/threads.py, benchmarks/results/2026-12-07-threads/): the tiny preset's gen-traj and train
# took 4-5x as long with 2 threads as with 1, with and without one more core kept busy. More threads can pay
# only for large operations on cores nothing else uses; torchrun already gives each rank 1.
THREADS = 1

# (flag, config key, type, help); type bool means a store_true flag setting the key to True
_FLAGS: dict[str, list[tuple[str, str, Any, str]]] = {
    "gen-traj": [
        ("--out", "traj.out", str, "dataset folder"),
        ("--num-samples", "traj.num_samples", int, "number of trajectories N"),
        ("--shard-size", "traj.shard_size", int, "trajectories per shard file"),
        ("--batch-size", "traj.batch_size", int, "trajectories solved together per process"),
        ("--solver", "traj.solver", str, "ddim | heun"),
        ("--solver-steps", "schedule.num_steps", int, "teacher solver steps from noise to data"),
        ("--seed", "traj.seed", int, "noise seed (sample i uses SeedSequence([seed, i]))"),
        ("--teacher-weights", "teacher.weights", str, "teacher network state_dict (teacher.kind=backbone)"),
        ("--max-new-shards", "traj.max_new_shards", int, "stop after this many new shards per process"),
        ("--device", "traj.device", str, "auto | cpu | cuda"),
    ],
    "train": [
        ("--data", "train.data", str, "trajectory dataset folder (default: traj.out)"),
        ("--out", "train.out", str, "run folder: checkpoint.pt, metrics.jsonl, config.yaml"),
        ("--steps", "train.steps", int, "optimizer steps in total (a resumed run continues up to this)"),
        ("--batch-size", "train.batch_size", int, "batch size per process"),
        ("--lr", "train.lr", float, "peak learning rate"),
        ("--bf16", "train.bf16", bool, "bf16 autocast for the forward pass"),
        ("--init-backbone", "train.init_backbone", str, "teacher backbone state_dict to initialise the U-Net"),
        ("--loss", "train.loss", str, "L1 | L2 | vgg (DSNO's perceptual loss)"),
        ("--temporal-precision", "model.temporal_precision", str, "fp32 (DSNO's numerics) | autocast (fused, fast)"),
        ("--device", "train.device", str, "auto | cpu | cuda"),
    ],
    "sample": [
        ("--checkpoint", "sample.checkpoint", str, "checkpoint.pt of a training run (default: train.out's)"),
        ("--out", "sample.out", str, "output folder"),
        ("--num-samples", "sample.num_samples", int, "number of samples"),
        ("--batch-size", "sample.batch_size", int, "samples per forward pass"),
        ("--seed", "sample.seed", int, "noise seed"),
        ("--class-label", "sample.class_label", int, "class for every sample (class-conditional models)"),
        (
            "--noise",
            "sample.noise",
            str,
            "seeded (per sample) | dsno (DSNO's generator stream for the seed and batch size)",
        ),
        ("--uint8", "sample.uint8", str, "truncate (DSNO's rule) | round"),
        ("--images", "sample.images", str, "none | folder | zip: final images as PNGs for FID tools"),
        ("--npz", "sample.npz", bool, "also write samples.npz (arr_0: [N, H, W, 3] uint8)"),
        ("--temporal-precision", "model.temporal_precision", str, "fp32 (DSNO's numerics) | autocast (fused, fast)"),
        ("--device", "sample.device", str, "auto | cpu | cuda"),
    ],
}

_SUMMARIES = {
    "gen-traj": "generate teacher trajectories (sharded, resumable, torchrun-aware)",
    "train": "train DSNO on trajectories (DDP under torchrun, exact resume)",
    "sample": "one forward pass from noise to the whole trajectory; .npy and PNG",
    "config": "print the resolved config as YAML",
    "convert": "convert a checkpoint of DSNO's own code (devzhk/DSNO-pytorch) to this package's format",
}

_DESCRIPTIONS = {
    "gen-traj": "Solve the teacher's probability-flow ODE from N seeded noises and store the states at the "
    "output time points as sharded .npy files with a manifest.json. Rerunning with the same "
    "settings resumes: finished shards are kept, unfinished ones redone. Under torchrun each "
    "rank writes its own shards.",
    "train": "Train DSNO on a trajectory dataset: Adam, warmup + multistep lr, snr-weighted L1/L2 loss over "
    "the time points, EMA, optional clipping and bf16, DDP under torchrun. Checkpoints are atomic "
    "and a rerun resumes exactly where checkpoint.pt left off.",
    "sample": "Map noise to the whole trajectory in one forward pass of a trained model; writes "
    "trajectory.npy and PNG grids.",
    "config": "Print the resolved config (preset or file, then --set overrides) as YAML.",
    "convert": "Read a checkpoint written by DSNO's training scripts (keys model / ema / args) and write a "
    "checkpoint that `dsno sample` and `dsno train` read: the weights mapped to this package's "
    "names and layouts, with the preset's config and time points. (`dsno sample` also reads "
    "DSNO's checkpoints directly.)",
}

_EXTENSIONS = {
    "eval": ("dsno.metrics", "evaluate samples or a trained model (provided by dsno.metrics)"),
    "demo": ("dsno.demo", "end-to-end demo (provided by dsno.demo)"),
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are one line, like every other error of `dsno` (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    """--threads and --debug: every command has them."""
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=THREADS,
        metavar="N",
        help=f"torch CPU threads (default {THREADS}: fastest for small models, and robust when other jobs "
        f"share the cores; raise it for large models on cores nothing else uses)",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or set DSNO_DEBUG=1)")


def _add_config_options(parser: argparse.ArgumentParser, config_help: str | None = None, *aliases: str) -> None:
    """-c/--config (and `aliases` of it) and --set."""
    parser.add_argument(
        "-c",
        "--config",
        *aliases,
        dest="config",
        required=True,
        metavar="PRESET|FILE",
        help=config_help
        or f"a preset ({', '.join(presets())}) or a YAML file (which may start from a preset with `base: NAME`)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config key, e.g. --set train.lr=1e-4 (repeatable; values are YAML)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dsno",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example (CPU): dsno gen-traj -c tiny && dsno train -c tiny && dsno sample -c tiny",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in ("gen-traj", "train", "sample", "config"):
        sub = commands.add_parser(command, help=_SUMMARIES[command], description=_DESCRIPTIONS[command])
        _add_config_options(sub)
        for flag, key, kind, text in _FLAGS.get(command, []):
            if kind is bool:
                sub.add_argument(
                    flag, dest=key, action="store_const", const=True, default=None, help=f"{text} (sets {key})"
                )
            else:
                metavar = flag.lstrip("-").upper().replace("-", "_")
                sub.add_argument(flag, dest=key, type=kind, default=None, metavar=metavar, help=f"{text} (sets {key})")
        if command != "config":
            sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        _add_common_options(sub)
        sub.set_defaults(subparser=sub)
    convert = commands.add_parser("convert", help=_SUMMARIES["convert"], description=_DESCRIPTIONS["convert"])
    convert.add_argument("official", metavar="OFFICIAL.pt", help="checkpoint of DSNO's code (solver-model_*.pt)")
    _add_config_options(  # -c as everywhere else; --preset is this command's earlier spelling
        convert, "the config the checkpoint was trained with: cifar10, imagenet64, or a YAML file", "--preset"
    )
    convert.add_argument("--out", required=True, metavar="OURS.pt", help="checkpoint to write (must not exist)")
    _add_common_options(convert)
    convert.set_defaults(subparser=convert)
    for command, (module_name, text) in _EXTENSIONS.items():
        sub = commands.add_parser(command, help=text, description=text)
        module = importlib.import_module(module_name)
        if hasattr(module, "add_arguments"):
            module.add_arguments(sub)
        _add_common_options(sub)
        sub.set_defaults(extension=module_name, subparser=sub)
    return parser


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config, args.overrides)
    for _, key, _, _ in _FLAGS.get(args.command, []):
        value = getattr(args, key, None)
        if value is not None:
            set_value(config, key, value)
    return validate_config(config)


def _run(args: argparse.Namespace, config: dict[str, Any]) -> int:
    from . import distributed

    progress = not args.no_progress
    with distributed.session():
        if args.command == "gen-traj":
            from .trajectories import generate_from_config

            manifest = generate_from_config(config, progress=progress)
            if distributed.current().is_main:
                state = "complete" if manifest["complete"] else "incomplete (rerun to continue)"
                print(f"{config['traj']['out']}: {len(manifest['shards'])}/{manifest['num_shards']} shards, {state}")
        elif args.command == "train":
            from .train import train

            result = train(config, progress=progress)
            if distributed.current().is_main:
                if result["start_step"] == result["step"]:
                    print(f"{result['out']} is already at step {result['step']} (train.steps): nothing to do")
                else:
                    print(
                        f"trained to step {result['step']} (loss {result['loss']:.6g}); checkpoint in {result['out']}"
                    )
        elif args.command == "sample":
            from .sample import sample

            result = sample(config, progress=progress)
            print(
                "wrote "
                + ", ".join(
                    str(result[key])
                    for key in ("trajectory", "images", "npz", "samples_png", "trajectory_png")
                    if key in result
                )
            )
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .official import convert_official_checkpoint

    config = load_config(args.config, args.overrides)
    try:
        state = convert_official_checkpoint(args.official, config, args.out)
    except KeyError as error:  # the state_dict is of another architecture: say which tensors
        raise ValueError(f"{args.official}: {error.args[0]}") from None
    print(
        f"wrote {args.out}: model {config['model']['name']}, {len(state['ema'])} tensors (EMA and raw weights), "
        f"time points t = {[round(t, 6) for t in state['t']]}"
    )
    return 0


def _describe(error: BaseException) -> str:
    """One line for an expected failure."""
    if isinstance(error, OSError) and error.errno is not None:
        where = f"{error.filename}: " if error.filename else ""
        if error.errno == errno.ENOSPC:
            return (
                f"{where}no space left on the device; free some (or write elsewhere) and rerun: finished work is kept"
            )
        return f"{where}{error.strerror}"
    text = " ".join(str(error).split()) or type(error).__name__
    return text


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "extension", None):
        handler: Callable[[argparse.Namespace], int | None] = importlib.import_module(args.extension).main
        return int(handler(args) or 0)
    if args.command == "convert":
        return _convert(args)
    config = _resolve(args)
    if args.command == "config":
        sys.stdout.write(dump_config(config))
        return 0
    return _run(args, config)


def _after_interrupt(args: argparse.Namespace) -> str:
    """What a rerun of the interrupted command starts from."""
    if args.command == "train":
        from .train import resume_note

        return resume_note(_resolve(args))
    if args.command == "gen-traj":
        from .trajectories import resume_note

        return resume_note(_resolve(args))
    if args.command == "demo":
        return "the same command starts it again"
    return "nothing was written, and earlier outputs are as they were"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command's parser, as argparse does for every other mistake in it
        args.subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    debug = args.debug or os.environ.get("DSNO_DEBUG", "") not in ("", "0")
    prog = args.subparser.prog
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _dispatch(args)
    except ConfigError as error:
        if debug:
            raise
        print(f"{prog}: error: {_describe(error)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:  # expected failures: bad or missing files, full disk, no device
        if debug:
            raise
        print(f"{prog}: error: {_describe(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        try:
            note = _after_interrupt(args)
        except Exception:  # e.g. a checkpoint being replaced: the interrupt is what to report
            note = "rerun the same command to continue"
        print(f"{prog}: interrupted; {note}", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)  # main() leaves the calling process as it found it


if __name__ == "__main__":
    sys.exit(main())
