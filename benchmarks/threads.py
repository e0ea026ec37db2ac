"""How many torch CPU threads `dsno` should use by default (`dsno.cli.THREADS`): `gen-traj` and `train` of the
`tiny` preset at each thread count, with the machine's other work as it is ("idle") and with one more process
keeping a core busy ("busy"), as another job on a shared machine does.

    python -m benchmarks.threads --out benchmarks/results/DATE-threads/threads.json

Each run is a fresh `python -m dsno ...` process timed from start to exit (the ~3 s import included, as a user
sees it); the thread counts alternate run by run so that drifting load hits them alike. The load averages
before and after each phase, and the CPU, are recorded with the times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "gen-traj": ["gen-traj", "-c", "tiny", "--no-progress", "--set", "traj.out={tmp}/traj-{run}"],
    "train --steps 20": [
        "train",
        "-c",
        "tiny",
        "--no-progress",
        "--steps",
        "20",
        "--set",
        "train.data={tmp}/traj",
        "--set",
        "train.out={tmp}/train-{run}",
    ],
}


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _run(argv: list[str]) -> float:
    environment = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dsno", *argv], check=True, capture_output=True, env=environment, cwd=REPO)
    return time.perf_counter() - started


def measure(threads: list[int], repeats: int, tmp: Path) -> dict:
    _run(["gen-traj", "-c", "tiny", "--no-progress", "--set", f"traj.out={tmp}/traj"])  # train's data
    results: dict = {"cpu": _cpu(), "cores": os.cpu_count(), "repeats": repeats, "phases": {}}
    for phase in ("idle", "busy"):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if phase == "busy" else None
        try:
            time.sleep(2 if busy else 0)
            record = {"loadavg_before": list(os.getloadavg()), "seconds": {}}
            for name, template in COMMANDS.items():
                times: dict[int, list[float]] = {n: [] for n in threads}
                for repeat in range(repeats):
                    for n in threads:
                        argv = [arg.format(tmp=tmp, run=f"{phase}-{n}-{repeat}") for arg in template]
                        times[n].append(_run([*argv, "--threads", str(n)]))
                record["seconds"][name] = {
                    str(n): {"runs": values, "median": statistics.median(values)} for n, values in times.items()
                }
            record["loadavg_after"] = list(os.getloadavg())
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        results["phases"][phase] = record
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(args.threads, args.repeats, Path(tmp))
    text = json.dumps(results, indent=1)
    print(text)
    for phase, record in results["phases"].items():
        for name, by_threads in record["seconds"].items():
            medians = ", ".join(f"{n} thread(s) {v['median']:.1f} s" for n, v in by_threads.items())
            print(f"{phase:>4} {name}: {medians}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
