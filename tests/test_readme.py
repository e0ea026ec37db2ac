"""Every code block of README.md runs: ```python blocks are executed as they are (in order, one namespace
per block); in ```bash blocks every `dsno COMMAND` named must exist and each option it uses must be one
that `dsno COMMAND --help` lists, and the configs they name must resolve; other lines (pip, pytest) are what CI
runs itself."""

import re
import shlex
from pathlib import Path

import pytest

from dsno import cli

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py

README = Path(__file__).resolve().parents[1] / "README.md"


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
