"""Every code block of README.md runs: ```python blocks are executed as they are (in order, one namespace
per block); in ```bash blocks every `dsno COMMAND` named must exist and each option it uses must be one
that `dsno COMMAND --help` lists, and the configs they name must resolve; the install recipes (```bash
blocks marked `<!-- recipe: NAME -->`) are what .ci/run runs, and the test command `pytest` too. The
numbers of the Install table and of the threads table are those of the committed measurements."""

import importlib.util
import json
import math
import re
import shlex
from pathlib import Path

import pytest

from dsno import cli

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def blocks(language: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```language block of the README."""
    text = README.read_text()
    found = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M):
        found.append((text[: match.start()].count("\n") + 1, match.group(1)))
    return found


def test_the_readme_has_code_blocks():
    assert blocks("python") and blocks("bash")


@pytest.mark.parametrize("line, code", blocks("python"), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_python_block_runs(line, code):
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


def dsno_invocations() -> list[tuple[int, list[str]]]:
    """(README line, argv after `dsno`) for each `dsno ...` / `python -m dsno ...` / `torchrun ... -m dsno ...`."""
    found = []
    for line, code in blocks("bash"):
        # a command continued with a trailing backslash is one line, reported at its first line
        commands, start = [], None
        for offset, text in enumerate(code.splitlines()):
            if start is None:
                start, parts = offset, []
            parts.append(text[:-1] if text.endswith("\\") else text)
            if not text.endswith("\\"):
                commands.append((start, " ".join(parts)))
                start = None
        for offset, text in commands:
            words = shlex.split(text, comments=True)
            for index, word in enumerate(words):
                if word == "dsno" and (index == 0 or words[index - 1] == "-m"):
                    found.append((line + 1 + offset, words[index + 1 :]))
                    break
    return found


def test_the_readme_shows_dsno_commands():
    assert {argv[0] for _, argv in dsno_invocations() if argv} >= {"gen-traj", "train", "sample", "demo"}


@pytest.mark.parametrize("line, argv", dsno_invocations(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_bash_dsno_command_parses(line, argv):
    """The command line parses with today's options and its config resolves (nothing is run)."""
    parser = cli.build_parser()
    if argv == ["--help"]:
        return
    args, unknown = parser.parse_known_args(argv)
    assert unknown == [], f"README.md:{line}: unknown options {unknown}"
    assert args.command == argv[0]
    if hasattr(args, "config"):
        cli._resolve(args)  # preset, --set keys and flag values all valid


# --------------------------------------------------------------------------------------------------
# "Install": two recipes (and neuraloperator's), which .ci/run runs as they are


def _recipe_module():
    spec = importlib.util.spec_from_file_location("recipe", REPO / ".ci" / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECIPES = _recipe_module().recipes(README.read_text())


def _pip_installs(code: str) -> list[str]:
    return [line.split("#")[0] for line in code.splitlines() if "pip install" in line]


def test_the_install_recipes_are_cpu_only_and_cuda():
    assert set(RECIPES) == {"cpu", "gpu", "neuralop"}
    cpu, gpu = RECIPES["cpu"], RECIPES["gpu"]
    assert "torch==2.13.0" in cpu and "CUDA_HOME" not in cpu
    assert 'DSNO_KERNELS_CUDA=0 python -m pip install -e ".[test]" --no-build-isolation' in cpu
    assert "torch==2.14.1" in gpu and "export CUDA_HOME=/usr/local/cuda DSNO_KERNELS_CUDA=1" in gpu
    assert 'python -m pip install -e ".[dev]" --no-build-isolation' in gpu
    for name in ("cpu", "gpu"):
        code = RECIPES[name]
        installs = _pip_installs(code)
        torch_line = next(i for i, line in enumerate(installs) if " torch==" in line)
        build_line = next(i for i, line in enumerate(installs) if " -e " in line)
        # numpy before the build: the build imports torch, which warns "Failed to initialize NumPy" without it
        assert torch_line < build_line and " numpy" in installs[torch_line], name
        assert "source .venv/bin/activate" in code.splitlines()[0], name


def test_the_extras_keep_each_recipes_torch():
    tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads TOML")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(package.startswith(("torch", "dsno")) for package in extras["test"])  # CPU: torch stays 2.13.0
    assert extras["dev"] == ["dsno-kernels[test]", "torchvision==0.29.1"]  # the release for the GPU recipe's torch
    assert "torch==2.14.1" in RECIPES["gpu"]


def test_ci_builds_both_recipes_from_the_readme():
    ci = (REPO / ".ci" / "run").read_text()
    assert 'eval "$(python3 .ci/recipe.py gpu)"' in ci
    assert 'eval "$(python3 "$repo/.ci/recipe.py" cpu)"' in ci
    assert 'eval "$(python3 .ci/recipe.py neuralop)"' in ci  # the interop test's optional dependency
    assert "pip install" not in ci  # every install step comes from README.md


def test_the_install_table_is_the_measured_one():
    measured = json.loads((REPO / "benchmarks/results/2026-12-07-install/install.json").read_text())
    text = README.read_text()
    for entry in measured["recipes"]:
        assert not entry["numpy_warning"], entry
        row = f"| {entry['recipe']} | {entry['seconds']:.0f} s | {entry['venv_mb']:,} MB |"
        assert row in text, row


def test_the_threads_table_is_the_measured_one():
    measured = json.loads((REPO / "benchmarks/results/2026-12-07-threads/threads.json").read_text())
    text = README.read_text()
    for phase, record in measured["phases"].items():
        for command, by_threads in record["seconds"].items():
            one, two = by_threads["1"]["median"], by_threads["2"]["median"]
            row = f"| `{command}` | {phase} | {one:.1f} s | {two:.1f} s |"
            assert row in text, row


# --------------------------------------------------------------------------------------------------
# "The DSNO system": `dsno eval` compares sample sets large enough for its Frechet distance


def test_readme_eval_compares_enough_samples_for_its_frechet_distance():
    """Each file or folder `dsno eval` reads in the README is made by a command before it; with N samples of D
    values, N > D on both sides (else eval warns that the FD is mostly estimation bias)."""
    made = {}  # path -> (N, D)
    evals = 0
    for line, argv in dsno_invocations():
        if not argv or argv[0] not in ("gen-traj", "sample", "eval"):
            continue
        args, _ = cli.build_parser().parse_known_args(argv)
        if argv[0] == "eval":
            for path in [*args.samples, args.reference]:
                count, dim = made[path]
                assert count > dim, f"README.md:{line}: {path} holds {count} samples of {dim} values"
            evals += 1
            continue
        config = cli._resolve(args)
        dim = math.prod(config["data"]["shape"])
        if argv[0] == "gen-traj":
            made[config["traj"]["out"]] = (config["traj"]["num_samples"], dim)
        else:
            made[f"{config['sample']['out']}/trajectory.npy"] = (config["sample"]["num_samples"], dim)
    assert evals >= 1


# --------------------------------------------------------------------------------------------------
# "FNO users": the table is the committed interleaved run


def test_the_fno_table_is_the_measured_one():
    results = REPO / "benchmarks/results/2026-12-08-cpu-fno"
    names = {  # the FNO-1D shapes of benchmarks/harness.py's CPU_SHAPES, as (B, T, K, C)
        (16, 64, 8, 32): "cpu-fno1d",
        (16, 256, 16, 64): "cpu-fno1d-t256",
        (16, 200, 24, 48): "cpu-fno1d-t200",
        (8, 1000, 40, 96): "cpu-fno1d-t1000",
        (4, 1024, 64, 128): "cpu-fno1d-t1024",
    }

    def duration(seconds: float) -> str:
        return f"{seconds * 1e6:.0f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"

    text = README.read_text()
    section = text[text.index("### FNO users") : text.index("## The DSNO system")]
    loads = []
    rows = 0
    for threads in (1, 2):
        run = json.loads((results / f"interleaved-{threads}t.json").read_text())
        loads += [run["load_average_start"][0], run["load_average_end"][0]]
        measured = {
            (row["shape"], row["direction"]): row
            for row in run["rows"]
            if row["dtype"] == "fp32" and row["op"] == "spectral_time_conv"
        }
        for shape, name in names.items():
            for direction in ("fwd", "fwd+bwd"):
                row = measured[name, direction]
                seconds = row["seconds"]
                line = (
                    f"| {', '.join(map(str, shape))} | {direction} | {threads} | {duration(seconds['neuralop'])} | "
                    f"{duration(seconds['cpu'])} | {row['speedup']['neuralop']:.2f}x |"
                )
                assert line in section, line
                rows += 1
    assert rows == section.count("\n| ") - 1  # every row of the table (less its separator) is a measured one
    assert f"load average {min(loads):.1f}-{max(loads):.1f} on 2 cores" in section


# --------------------------------------------------------------------------------------------------
# "Support matrix": the triton backend's host time is the kernel report's last table


def test_the_host_times_are_the_kernel_reports():
    table = (REPO / "benchmarks/results/kernel_report.md").read_text()

    def median(call: str) -> str:
        row = next(line for line in table.splitlines() if line.startswith(f"| {call} |"))
        return row.split("|")[4].split()[0]  # the triton host us column (the floor has its value there too)

    text = " ".join(README.read_text().split())
    assert f"{median('time_conv fwd')} us forward and {median('time_conv fwd+bwd')} us forward+backward" in text
    assert f"takes {median('floor fwd')} / {median('floor fwd+bwd')} us" in text
