"""README.md's install recipes, each run in a fresh clone of this repository: the wall time of the whole recipe,
the size of the venv it makes, whether the build warned that NumPy was missing, and what it built.

    python3 -m benchmarks.install_recipes --out benchmarks/results/DATE-install/install.json [cpu gpu]

The recipes are read from README.md by .ci/recipe.py, as CI reads them. The clones are of the committed HEAD.
Standard library only (it runs outside any venv); the load averages are recorded with the times.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _recipes() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("recipe", REPO / ".ci" / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.recipes((REPO / "README.md").read_text())


def _cpu() -> str:
    with open("/proc/cpuinfo") as info:
        return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")


def run_recipe(name: str, code: str, root: Path) -> dict:
    clone = root / name
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    before = list(os.getloadavg())
    started = time.perf_counter()
    log = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=clone, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = list(os.getloadavg())
    if log.returncode != 0:
        sys.exit(f"recipe {name} failed:\n{log.stdout[-3000:]}\n{log.stderr[-3000:]}")
    size = subprocess.run(["du", "-sm", ".venv"], cwd=clone, capture_output=True, text=True, check=True)
    info = subprocess.run(
        [".venv/bin/python", "-m", "dsno_kernels.info"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout
    return {
        "recipe": name,
        "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True
        ).stdout.strip(),
        "seconds": round(seconds, 1),
        "venv_mb": int(size.stdout.split()[0]),
        "numpy_warning": "Failed to initialize NumPy" in log.stdout + log.stderr,
        "torch": next(line.split()[1] for line in info.splitlines() if line.startswith("torch ")),
        "extension": next(line.split(None, 1)[1] for line in info.splitlines() if line.startswith("extension")),
        "loadavg_before": before,
        "loadavg_after": after,
    }


def main() -> None:
    recipes = _recipes()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=list(recipes), help=f"recipes to run ({', '.join(recipes)})")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    results = {"cpu": _cpu(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "recipes": []}
    with tempfile.TemporaryDirectory() as root:
        for name in args.names:
            results["recipes"].append(run_recipe(name, recipes[name], Path(root)))
            print(json.dumps(results["recipes"][-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
