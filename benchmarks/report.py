"""Turn pytest-benchmark JSON from the suites into a markdown report and plots.

    python -m benchmarks.report RESULTS.json [MORE.json ...] [--out DIR]

Prints the report and writes, into DIR (default: the first JSON's folder):
    report.md               per (op, direction, dtype): median time, GB/s (the byte floor over the
                            median), % of the copy bandwidth measured in the same session, and the
                            speed-up over dsno_fft and dense_gemm at the same shape; the copy
                            benchmark; the model-level table with times per image and the one-pass
                            versus 512-step-teacher sampling speed-up
    speedup_by_shape.png    speed-up over dsno_fft, by shape, one panel per (op, direction, dtype)
    bandwidth_by_shape.png  % of copy bandwidth, by shape, same panels
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import defaultdict

import dsno_kernels

# The fused-kernel providers are the dsno_kernels backends benchmarked on some device (their records say).
KERNEL_PROVIDERS = tuple(b.name for b in dsno_kernels.backends() if b.benchmark_device is not None)
PROVIDER_ORDER = ("dsno_fft", "torch_fft", "dense_gemm", "neuralop", *KERNEL_PROVIDERS, "teacher", "torch")
OP_ORDER = ("spectral_time_conv", "time_conv")
MODEL_OPS = ("train_step", "sample_one_pass", "sample_teacher_ddim512")
DIRECTION_ORDER = ("fwd", "fwd+bwd")
DTYPE_ORDER = ("fp32", "bf16")
BASELINES = ("dsno_fft", "dense_gemm")
REQUIRED_KEYS = ("provider", "op", "direction", "dtype", "shape", "bytes", "gbps", "copy_gbps", "device", "torch", "triton")


def load_results(paths: list[str]) -> list[dict]:
    """One flat record per benchmark carrying the suite's extra_info keys and its median (seconds)."""
    records = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info", {})
            if not all(key in info for key in REQUIRED_KEYS):
                continue  # not one of this project's suites
            records.append({**info, "median": bench["stats"]["median"], "rounds": bench["stats"]["rounds"]})
    return records


def _order(value, order) -> tuple:
    return (order.index(value), "") if value in order else (len(order), str(value))


def format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds:.3f} s"


def _fmt(value, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


def _fmt_gbps(value) -> str:
    """GB/s with three significant digits for the CPU's small numbers, one decimal for a GPU's."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.1f}" if value >= 100 else f"{value:.3g}"


def speedup(records_by_key: dict, record: dict, baseline: str):
    key = (record["device"], record["op"], record["direction"], record["dtype"], record["shape"], baseline)
    base = records_by_key.get(key)
    return base["median"] / record["median"] if base is not None else None


def batch_of(shape: str):
    match = re.search(r"-b(\d+)$", shape)
    return int(match.group(1)) if match else None


def percent_of_copy(record: dict):
    if record["gbps"] is None or not record["copy_gbps"] or math.isnan(record["copy_gbps"]):
        return None
    return 100.0 * record["gbps"] / record["copy_gbps"]


def build_report(records: list[dict], sources: list[str]) -> str:
    by_key = {(r["device"], r["op"], r["direction"], r["dtype"], r["shape"], r["provider"]): r for r in records}
    shape_order = []
    for r in records:
        if r["shape"] not in shape_order:
            shape_order.append(r["shape"])
    lines = ["# dsno-kernels benchmarks", ""]
    devices = sorted({r["device"] for r in records})
    for device in devices:
        env = next(r for r in records if r["device"] == device)
        lines.append(
            f"- **{device}**: torch {env['torch']}, triton {env['triton']}, "
            f"copy bandwidth {_fmt_gbps(env['copy_gbps'])} GB/s (measured in the same session)"
        )
    lines.append(f"- sources: {', '.join(os.path.basename(s) for s in sources)}")
    lines.append(
        "- GB/s = DESIGN.md's byte floor (fwd: read x + weight, write y; bwd: read x, dy, write dx, dweight) "
        "over the median time; speed-up = the baseline's median over this provider's, same shape."
    )
    lines.append("")

    sort_key = lambda r: (_order(r["shape"], shape_order), _order(r["provider"], PROVIDER_ORDER))  # noqa: E731
    fused = [r for r in records if r["op"] == "time_conv" and r["provider"] in KERNEL_PROVIDERS]
    if fused:
        lines += ["## Summary: DSNO's layer (time_conv) on the fused kernels", "",
                  "| shape | dtype | direction | provider | median | % of copy | vs dsno_fft | vs dense_gemm |",
                  "|---|---|---|---|--:|--:|--:|--:|"]
        fused.sort(key=lambda r: (r["device"], _order(r["shape"], shape_order), _order(r["dtype"], DTYPE_ORDER),
                                  _order(r["direction"], DIRECTION_ORDER), _order(r["provider"], PROVIDER_ORDER)))
        for r in fused:
            cells = [r["shape"], r["dtype"], r["direction"], r["provider"], format_time(r["median"]),
                     _fmt(percent_of_copy(r), ".1f", "%"), *(_fmt(speedup(by_key, r, b), ".2f", "x") for b in BASELINES)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    groups = defaultdict(list)
    for r in records:
        if r["op"] in OP_ORDER:
            groups[(r["device"], r["op"], r["direction"], r["dtype"])].append(r)
    for (device, op, direction, dtype) in sorted(
        groups,
        key=lambda g: (g[0], _order(g[1], OP_ORDER), _order(g[2], DIRECTION_ORDER), _order(g[3], DTYPE_ORDER)),
    ):
        title = f"## {op} · {direction} · {dtype}" + (f" · {device}" if len(devices) > 1 else "")
        lines += [title, "", "| shape | provider | median | GB/s | % of copy | vs dsno_fft | vs dense_gemm |",
                  "|---|---|--:|--:|--:|--:|--:|"]
        for r in sorted(groups[(device, op, direction, dtype)], key=sort_key):
            cells = [
                r["shape"],
                r["provider"],
                format_time(r["median"]),
                _fmt_gbps(r["gbps"]),
                _fmt(percent_of_copy(r), ".1f", "%"),
                *(_fmt(speedup(by_key, r, b), ".2f", "x") for b in BASELINES),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    copies = [r for r in records if r["op"] == "copy"]
    if copies:
        lines += ["## Copy bandwidth", "", "| device | buffer | median | GB/s |", "|---|---|--:|--:|"]
        for r in copies:
            lines.append(f"| {r['device']} | {r['shape']} | {format_time(r['median'])} | {_fmt_gbps(r['gbps'])} |")
        lines.append("")

    models = [r for r in records if r["op"] in MODEL_OPS]
    if models:
        lines += ["## Model level", "",
                  "| model | dtype | op | provider | median | per image | vs dsno_fft | vs dense_gemm |",
                  "|---|---|---|---|--:|--:|--:|--:|"]
        models.sort(key=lambda r: (r["device"], r["shape"], _order(r["op"], MODEL_OPS), _order(r["provider"], PROVIDER_ORDER)))
        for r in models:
            batch = batch_of(r["shape"])
            per_image = format_time(r["median"] / batch) if batch and r["op"] != "train_step" else "-"
            cells = [r["shape"], r["dtype"], r["op"], r["provider"], format_time(r["median"]), per_image,
                     *(_fmt(speedup(by_key, r, b), ".2f", "x") for b in BASELINES)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        teachers = {(r["device"], r["shape"]): r for r in models if r["op"] == "sample_teacher_ddim512"}
        for r in models:
            teacher = teachers.get((r["device"], r["shape"]))
            if r["op"] == "sample_one_pass" and teacher is not None:
                lines.append(
                    f"- one-pass sampling with {r['provider']} is {teacher['median'] / r['median']:.1f}x faster per "
                    f"image than the teacher's 512-step DDIM ({r['shape']}, {r['dtype']}, {r['device']})"
                )
        lines.append("")
    return "\n".join(lines)


def write_plots(records: list[dict], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    op_records = [r for r in records if r["op"] in OP_ORDER]
    if not op_records:
        return []
    by_key = {(r["device"], r["op"], r["direction"], r["dtype"], r["shape"], r["provider"]): r for r in op_records}
    panels = sorted(
        {(r["op"], r["direction"], r["dtype"]) for r in op_records},
        key=lambda p: (_order(p[0], OP_ORDER), _order(p[1], DIRECTION_ORDER), _order(p[2], DTYPE_ORDER)),
    )
    shapes = []
    for r in op_records:
        if r["shape"] not in shapes:
            shapes.append(r["shape"])
    device = op_records[0]["device"]
    written = []
    for filename, ylabel, value_of, providers_shown, log in (
        ("speedup_by_shape.png", "speed-up over dsno_fft", lambda r: speedup(by_key, r, "dsno_fft"),
         lambda p: p != "dsno_fft", True),
        ("bandwidth_by_shape.png", "% of copy bandwidth", percent_of_copy, lambda p: True, False),
    ):
        columns = min(4, len(panels))
        rows = math.ceil(len(panels) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            panel_records = [r for r in op_records if (r["op"], r["direction"], r["dtype"]) == panel]
            providers = sorted({r["provider"] for r in panel_records if providers_shown(r["provider"])},
                               key=lambda p: _order(p, PROVIDER_ORDER))
            panel_shapes = [s for s in shapes if any(r["shape"] == s for r in panel_records)]
            width = 0.8 / max(len(providers), 1)
            for i, provider in enumerate(providers):
                xs, ys = [], []
                for j, shape in enumerate(panel_shapes):
                    r = next((r for r in panel_records if r["shape"] == shape and r["provider"] == provider), None)
                    value = value_of(r) if r is not None else None
                    if value is not None:
                        xs.append(j + (i - (len(providers) - 1) / 2) * width)
                        ys.append(value)
                ax.bar(xs, ys, width=width, label=provider)
            if log:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
                ax.yaxis.set_minor_formatter(NullFormatter())
                ax.axhline(1.0, color="black", linewidth=0.8)
            else:
                ax.axhline(100.0, color="black", linewidth=0.8, linestyle="--")
            ax.set_xticks(range(len(panel_shapes)))
            ax.set_xticklabels(panel_shapes, rotation=45, ha="right", fontsize=8)
            ax.set_title(" · ".join(panel), fontsize=9)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle(f"{ylabel} — {device}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, filename)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON files (--benchmark-json)")
    parser.add_argument("--out", help="folder for report.md and the plots (default: the first JSON's folder)")
    args = parser.parse_args(argv)
    records = load_results(args.results)
    if not records:
        print(f"no results of the dsno benchmark suites in {args.results}", file=sys.stderr)
        return 1
    out_dir = args.out or os.path.dirname(os.path.abspath(args.results[0]))
    os.makedirs(out_dir, exist_ok=True)
    report = build_report(records, args.results)
    print(report)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(report + "\n")
    for path in write_plots(records, out_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
