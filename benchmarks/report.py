"""Turn pytest-benchmark JSON from the suites into a markdown report and plots.

    python -m benchmarks.report RESULTS.json [MORE.json ...] [--out DIR]
    python -m benchmarks.report --strip RESULTS.json [...]   keep only what the tables read, in place

Prints the report and writes, into DIR (default: the first JSON's folder):
    report.md               the targets (docs/design.md) with measured value and pass/miss; per (op,
                            direction, dtype): host-inclusive and kernel-only median, GB/s (the byte
                            floor over each time), % of the copy bandwidth measured in the same
                            session, and the speed-up over dsno_fft and dense_gemm at the same shape;
                            the copy benchmark; the model-level table with times per image, the share
                            of the training step in temporal layers, and the one-pass versus
                            512-step-teacher sampling speed-up
    speedup_by_shape.png    speed-up over dsno_fft, by shape, one panel per (op, direction, dtype)
    bandwidth_by_shape.png  % of copy bandwidth (kernel-only where measured), by shape, same panels
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from collections import defaultdict

import dsno_kernels
from dsno_kernels.shapes import GPU_SHAPES

# The fused-kernel providers are the dsno_kernels backends benchmarked on some device (their records say).
KERNEL_PROVIDERS = tuple(b.name for b in dsno_kernels.registered_backends() if b.benchmark_device is not None)
PROVIDER_ORDER = ("dsno_fft", "torch_fft", "dense_gemm", "neuralop", *KERNEL_PROVIDERS, "teacher", "torch")
OP_ORDER = ("spectral_time_conv", "time_conv")
MODEL_OPS = (
    "train_step",
    "train_step_compiled",
    "sample_one_pass",
    "sample_one_pass_cudagraph",
    "sample_teacher_ddim512",
)
ONE_PASS_OPS = ("sample_one_pass", "sample_one_pass_cudagraph")
SHARE_OP = "temporal_share"  # a profiled training step: extra_info "temporal_share", no timing to show
DIRECTION_ORDER = ("fwd", "fwd+bwd")
DTYPE_ORDER = ("fp32", "bf16")
BASELINES = ("dsno_fft", "dense_gemm")
REQUIRED_KEYS = (
    "provider",
    "op",
    "direction",
    "dtype",
    "shape",
    "bytes",
    "gbps",
    "copy_gbps",
    "device",
    "torch",
    "triton",
)
# Added later; results saved before them read as None.
OPTIONAL_KEYS = ("kernel_seconds", "kernel_gbps", "temporal_share")
GPU_MODEL = "cifar10-b32"  # harness.MODEL_CASES["gpu"].name


# What the tables read of a benchmark (load_results, load_host_times); `slim` drops the rest (the
# run's machine_info and commit_info stay).
KEPT_KEYS = ("params", "extra_info", "stats")
KEPT_STATS = ("median", "rounds")


def drop_round_samples(results: dict) -> dict:
    """Remove pytest-benchmark's raw per-round durations (`stats.data`) from a results dict, in place;
    the statistics (median, iqr, rounds, ...) stay. They were most of the bytes of a results JSON."""
    for bench in results.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)
    return results


def slim(results: dict) -> dict:
    """A results dict reduced, in place, to what the tables read: per benchmark KEPT_KEYS, of its
    statistics KEPT_STATS (the per-round samples, pytest-benchmark's other statistics and options go)."""
    for index, bench in enumerate(results.get("benchmarks", [])):
        kept = {key: bench[key] for key in KEPT_KEYS if key in bench}
        if "stats" in kept:
            kept["stats"] = {key: kept["stats"][key] for key in KEPT_STATS if key in kept["stats"]}
        results["benchmarks"][index] = kept
    return results


def strip_file(path: str) -> None:
    """slim on a JSON file, rewritten atomically with one benchmark per line (compact, and diffable)."""
    with open(path) as f:
        results = slim(json.load(f))
    compact = {"separators": (",", ":")}
    head = [
        f"{json.dumps(key)}:{json.dumps(value, **compact)}" for key, value in results.items() if key != "benchmarks"
    ]
    benchmarks = ",\n".join(json.dumps(bench, **compact) for bench in results.get("benchmarks", []))
    _write_atomically(path, "{" + ",\n".join([*head, f'"benchmarks":[\n{benchmarks}]']) + "}\n")


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
            optional = {key: info.get(key) for key in OPTIONAL_KEYS}
            records.append({**info, **optional, "median": bench["stats"]["median"], "rounds": bench["stats"]["rounds"]})
    return records


def load_host_times(paths: list[str]) -> list[dict]:
    """benchmarks/test_host_overhead.py's records: the host time per call (extra_info host_us ...)."""
    rows = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for bench in data.get("benchmarks", []):
            if "host_us" in bench.get("extra_info", {}):
                backend, op, direction = bench["params"]["backend"], bench["params"]["op"], bench["params"]["direction"]
                rows.append({"backend": backend, "op": op, "direction": direction, **bench["extra_info"]})
    return rows


def host_table(host_times: list[dict]) -> list[str]:
    lines = [
        "## Host time per call",
        "",
        "benchmarks/test_host_overhead.py: thread CPU time per public-API call on tiny CPU tensors, "
        "triton with its launcher stubbed (everything but the kernel launch); floor = an autograd.Function "
        "that only allocates. Median (fastest-slowest round).",
        "",
        "| backend | op | direction | host us | budget us | launches | load |",
        "|---|---|---|--:|--:|--:|--:|",
    ]
    for r in host_times:
        lines.append(
            _row(
                [
                    r["backend"],
                    r["op"],
                    r["direction"],
                    f"{r['host_us']:.1f} ({r['host_us_min']:.1f}-{r['host_us_max']:.1f})",
                    _fmt(r.get("budget_us"), ".0f"),
                    _fmt(r.get("launches_per_call"), "d"),
                    f"{r['load']:.2f}",
                ]
            )
        )
    return lines + [""]


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


def percent_of_copy(record: dict, kernel: bool = False):
    """The achieved fraction of the byte floor: floor bytes over the (host-inclusive, or kernel-only)
    time, as a % of the copy bandwidth measured in the same session."""
    gbps = record["kernel_gbps"] if kernel else record["gbps"]
    if gbps is None or not record["copy_gbps"] or math.isnan(record["copy_gbps"]):
        return None
    return 100.0 * gbps / record["copy_gbps"]


def best_percent_of_copy(record: dict):
    """% of copy on the kernel-only time where it was measured (a GPU), else on the host-inclusive one."""
    kernel = percent_of_copy(record, kernel=True)
    return kernel if kernel is not None else percent_of_copy(record)


def _row(cells) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"  # "5|x|" inside a cell


def _kernel_time(record: dict) -> str:
    return format_time(record["kernel_seconds"]) if record["kernel_seconds"] else "-"


# ------------------------------------------------------------------------------------------------
# Targets (docs/design.md; on an H100/H200 at the GPU shapes)

PASS, MISS, UNMEASURED = "pass", "MISS", "not measured"


def _fused(records, **match) -> list[dict]:
    return [r for r in records if r["provider"] in KERNEL_PROVIDERS and all(r[k] == v for k, v in match.items())]


def _bandwidth_target(records, shape, direction, percent):
    candidates = [
        (best_percent_of_copy(r), r)
        for r in _fused(records, op="time_conv", dtype="bf16", shape=shape, direction=direction)
    ]
    candidates = [(p, r) for p, r in candidates if p is not None]
    if not candidates:
        return "-", UNMEASURED
    value, best = max(candidates, key=lambda c: c[0])
    basis = "kernel-only" if best["kernel_gbps"] is not None else "host-inclusive"
    return f"{value:.1f}% ({best['provider']}, {basis})", PASS if value >= percent else MISS


def _dense_gemm_target(records, by_key):
    cases = []  # (speed-up of the fastest fused provider over dense_gemm, case)
    for dense in (
        r for r in records if r["provider"] == "dense_gemm" and r["op"] == "time_conv" and r["shape"] in GPU_SHAPES
    ):
        fused = [
            by_key.get((dense["device"], "time_conv", dense["direction"], dense["dtype"], dense["shape"], p))
            for p in KERNEL_PROVIDERS
        ]
        fused = [r for r in fused if r is not None]
        if fused:
            best = min(fused, key=lambda r: r["median"])
            cases.append((dense["median"] / best["median"], f"{dense['shape']} {dense['dtype']} {dense['direction']}"))
    if not cases:
        return "-", UNMEASURED
    worst = min(cases)
    ahead = sum(1 for ratio, _ in cases if ratio > 1)
    return (
        f"ahead in {ahead} of {len(cases)} cases; least {worst[0]:.2f}x ({worst[1]})",
        PASS if ahead == len(cases) else MISS,
    )


def _latency_target(records, seconds):
    fused = _fused(records, op="time_conv", dtype="bf16", shape="cifar10-8", direction="fwd")
    if not fused:
        return "-", UNMEASURED
    best = min(fused, key=lambda r: r["median"])
    return f"{format_time(best['median'])} ({best['provider']})", PASS if best["median"] < seconds else MISS


def _train_step_target(records, by_key, factor):
    speedups = [(speedup(by_key, r, "dsno_fft"), r) for r in _fused(records, op="train_step", shape=GPU_MODEL)]
    speedups = [(s, r) for s, r in speedups if s is not None]
    if not speedups:
        return "-", UNMEASURED
    value, best = max(speedups, key=lambda c: c[0])
    return f"{value:.2f}x ({best['provider']})", PASS if value >= factor else MISS


def _sampling_target(records, factor):
    teacher = next((r for r in records if r["op"] == "sample_teacher_ddim512" and r["shape"] == GPU_MODEL), None)
    one_pass = [r for r in _fused(records, shape=GPU_MODEL) if r["op"] in ONE_PASS_OPS]
    if teacher is None or not one_pass:
        return "-", UNMEASURED
    best = min(one_pass, key=lambda r: r["median"])
    value = teacher["median"] / best["median"]
    return f"{value:.0f}x ({best['provider']}, {best['op']})", PASS if value >= factor else MISS


def _compile_target(records):
    compiled = sorted({r["provider"] for r in _fused(records, op="train_step_compiled", shape=GPU_MODEL)})
    if not compiled:
        return "no result (see the log: not run, or the compile failed)", UNMEASURED
    return f"compiled and ran: {', '.join(compiled)}", PASS


def targets_table(records: list[dict], by_key: dict) -> list[str]:
    """The targets with the measured value and pass/MISS ("not measured" where the run has no result)."""
    rows = [
        (
            "time_conv bf16 fwd, cifar10-32: >= 80% of copy bandwidth",
            _bandwidth_target(records, "cifar10-32", "fwd", 80),
        ),
        (
            "time_conv bf16 fwd, cifar10-16: >= 60% of copy bandwidth",
            _bandwidth_target(records, "cifar10-16", "fwd", 60),
        ),
        (
            "time_conv bf16 fwd+bwd, cifar10-32: >= 50% of copy bandwidth on the 5|x| floor",
            _bandwidth_target(records, "cifar10-32", "fwd+bwd", 50),
        ),
        (
            "time_conv faster than dense_gemm at every shape, dtype and direction (host-inclusive)",
            _dense_gemm_target(records, by_key),
        ),
        ("time_conv bf16 fwd, cifar10-8: under 15 us host-inclusive", _latency_target(records, 15e-6)),
        (
            f"{GPU_MODEL} training step (bf16 autocast): >= 1.5x faster with fused temporal layers than dsno_fft",
            _train_step_target(records, by_key, 1.5),
        ),
        (
            f"{GPU_MODEL} one-pass sampling: >= 100x the images/s of the 512-step teacher DDIM",
            _sampling_target(records, 100),
        ),
        (
            f"{GPU_MODEL} training step under torch.compile(fullgraph=True) with fused temporal layers",
            _compile_target(records),
        ),
    ]
    lines = [
        "## Targets (docs/design.md: an H100/H200 at the GPU shapes; best fused backend)",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    lines += [_row([name, value, verdict]) for name, (value, verdict) in rows]
    return lines + [""]


def build_report(records: list[dict], sources: list[str], host_times: list[dict] = ()) -> str:
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
    lines += [
        "- host-incl. = wall clock per call, Python and dispatch included (calls back to back); kernel-only = "
        "device time with the calls queued behind a sleep kernel, CUDA events around them. On the CPU the "
        "two coincide (the kernel runs in the calling thread): kernel-only shows -.",
        "- byte floor (docs/design.md): fwd 2|x| + |w| (read x and the weight, write y); fwd+bwd 5|x| + 2|w| (also "
        "read x and dy, write dx and grad_weight: a single-pass backward). GB/s = floor over the time; % of copy = "
        "the achieved fraction of the floor against the copy bandwidth; speed-up = the baseline's "
        "host-inclusive median over this provider's, same shape.",
        "",
    ]
    if any(r["shape"] in GPU_SHAPES or r["shape"] == GPU_MODEL for r in records):
        lines += targets_table(records, by_key)

    sort_key = lambda r: (_order(r["shape"], shape_order), _order(r["provider"], PROVIDER_ORDER))  # noqa: E731
    fused = [r for r in records if r["op"] == "time_conv" and r["provider"] in KERNEL_PROVIDERS]
    if fused:
        lines += [
            "## Summary: DSNO's layer (time_conv) on the fused kernels",
            "",
            "| shape | dtype | direction | provider | host-incl. | kernel-only | % of copy | kernel % of copy "
            "| vs dsno_fft | vs dense_gemm |",
            "|---|---|---|---|--:|--:|--:|--:|--:|--:|",
        ]
        fused.sort(
            key=lambda r: (
                r["device"],
                _order(r["shape"], shape_order),
                _order(r["dtype"], DTYPE_ORDER),
                _order(r["direction"], DIRECTION_ORDER),
                _order(r["provider"], PROVIDER_ORDER),
            )
        )
        for r in fused:
            lines.append(
                _row(
                    [
                        r["shape"],
                        r["dtype"],
                        r["direction"],
                        r["provider"],
                        format_time(r["median"]),
                        _kernel_time(r),
                        _fmt(percent_of_copy(r), ".1f", "%"),
                        _fmt(percent_of_copy(r, kernel=True), ".1f", "%"),
                        *(_fmt(speedup(by_key, r, b), ".2f", "x") for b in BASELINES),
                    ]
                )
            )
        lines.append("")

    groups = defaultdict(list)
    for r in records:
        if r["op"] in OP_ORDER:
            groups[(r["device"], r["op"], r["direction"], r["dtype"])].append(r)
    for device, op, direction, dtype in sorted(
        groups,
        key=lambda g: (g[0], _order(g[1], OP_ORDER), _order(g[2], DIRECTION_ORDER), _order(g[3], DTYPE_ORDER)),
    ):
        title = f"## {op} · {direction} · {dtype}" + (f" · {device}" if len(devices) > 1 else "")
        lines += [
            title,
            "",
            "| shape | provider | host-incl. | kernel-only | GB/s | % of copy | kernel GB/s "
            "| kernel % of copy | vs dsno_fft | vs dense_gemm |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for r in sorted(groups[(device, op, direction, dtype)], key=sort_key):
            lines.append(
                _row(
                    [
                        r["shape"],
                        r["provider"],
                        format_time(r["median"]),
                        _kernel_time(r),
                        _fmt_gbps(r["gbps"]),
                        _fmt(percent_of_copy(r), ".1f", "%"),
                        _fmt_gbps(r["kernel_gbps"]),
                        _fmt(percent_of_copy(r, kernel=True), ".1f", "%"),
                        *(_fmt(speedup(by_key, r, b), ".2f", "x") for b in BASELINES),
                    ]
                )
            )
        lines.append("")

    copies = [r for r in records if r["op"] == "copy"]
    if copies:
        lines += [
            "## Copy bandwidth",
            "",
            "| device | buffer | host-incl. | kernel-only | GB/s | kernel GB/s |",
            "|---|---|--:|--:|--:|--:|",
        ]
        for r in copies:
            lines.append(
                _row(
                    [
                        r["device"],
                        r["shape"],
                        format_time(r["median"]),
                        _kernel_time(r),
                        _fmt_gbps(r["gbps"]),
                        _fmt_gbps(r["kernel_gbps"]),
                    ]
                )
            )
        lines.append("")

    models = [r for r in records if r["op"] in MODEL_OPS]
    if models:
        lines += [
            "## Model level",
            "",
            "| model | dtype | op | provider | median | per image | temporal layers | vs dsno_fft | vs dense_gemm |",
            "|---|---|---|---|--:|--:|--:|--:|--:|",
        ]
        models.sort(
            key=lambda r: (r["device"], r["shape"], _order(r["op"], MODEL_OPS), _order(r["provider"], PROVIDER_ORDER))
        )
        for r in models:
            batch = batch_of(r["shape"])
            per_image = format_time(r["median"] / batch) if batch and not r["op"].startswith("train_step") else "-"
            profiled = by_key.get((r["device"], SHARE_OP, r["direction"], r["dtype"], r["shape"], r["provider"]))
            share = profiled["temporal_share"] if profiled is not None and r["op"] == "train_step" else None
            share = _fmt(None if share is None else 100 * share, ".0f", "%")
            lines.append(
                _row(
                    [
                        r["shape"],
                        r["dtype"],
                        r["op"],
                        r["provider"],
                        format_time(r["median"]),
                        per_image,
                        share,
                        *(_fmt(speedup(by_key, r, b), ".2f", "x") for b in BASELINES),
                    ]
                )
            )
        lines.append("")
        if any(r["op"] == SHARE_OP for r in records):
            lines += [
                "- temporal layers: the share of a profiled training step spent in the temporal layers "
                "(their forward ops and the backward nodes those created; device time on a GPU, op time "
                "on the CPU).",
                "",
            ]
        teachers = {(r["device"], r["shape"]): r for r in models if r["op"] == "sample_teacher_ddim512"}
        for r in models:
            teacher = teachers.get((r["device"], r["shape"]))
            if r["op"] in ONE_PASS_OPS and teacher is not None:
                how = " (CUDA graph)" if r["op"] == "sample_one_pass_cudagraph" else ""
                lines.append(
                    f"- one-pass sampling with {r['provider']}{how} is {teacher['median'] / r['median']:.1f}x faster "
                    f"per image than the teacher's 512-step DDIM ({r['shape']}, {r['dtype']}, {r['device']})"
                )
        lines.append("")
    if host_times:
        lines += host_table(host_times)
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
        (
            "speedup_by_shape.png",
            "speed-up over dsno_fft",
            lambda r: speedup(by_key, r, "dsno_fft"),
            lambda p: p != "dsno_fft",
            True,
        ),
        ("bandwidth_by_shape.png", "% of copy bandwidth", best_percent_of_copy, lambda p: True, False),
    ):
        columns = min(4, len(panels))
        rows = math.ceil(len(panels) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            panel_records = [r for r in op_records if (r["op"], r["direction"], r["dtype"]) == panel]
            providers = sorted(
                {r["provider"] for r in panel_records if providers_shown(r["provider"])},
                key=lambda p: _order(p, PROVIDER_ORDER),
            )
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
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.suptitle(f"{ylabel} — {device}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, filename)
        _save_small_png(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def _save_small_png(fig, path: str) -> None:
    """The figure as a 64-colour palette PNG: a third of the bytes of matplotlib's RGBA one, the same plot."""
    import io

    from PIL import Image  # matplotlib's own dependency

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    image = (
        Image.open(buffer).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    )
    image.save(path, optimize=True)


def brief(report: str) -> str:
    """The report's header, its targets and the host time per call."""
    head, *sections = report.split("\n## ")
    return "\n## ".join([head, *(s for s in sections if s.startswith(("Targets", "Host time")))]).rstrip()


def _write_atomically(path: str, text: str) -> None:
    """Write a sibling temporary file and rename it over `path` (which keeps its permissions)."""
    mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
    with tempfile.NamedTemporaryFile(
        "w", dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp", delete=False
    ) as tmp:
        tmp.write(text)
    os.chmod(tmp.name, mode)
    os.replace(tmp.name, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON files (--benchmark-json)")
    parser.add_argument("--out", help="folder for report.md and the plots (default: the first JSON's folder)")
    parser.add_argument(
        "--strip", action="store_true", help="only reduce the files to what the tables read (slim), in place"
    )
    parser.add_argument(
        "--brief", action="store_true", help="print only the header and the targets (report.md still gets everything)"
    )
    args = parser.parse_args(argv)
    try:
        if args.strip:
            for path in args.results:
                strip_file(path)
                print(f"stripped {path}")
            return 0
        records = load_results(args.results)
        host_times = load_host_times(args.results)
    except (OSError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        print(f"benchmarks.report: cannot read results: {error}", file=sys.stderr)
        return 1
    if not records and not host_times:
        print(f"no results of the dsno benchmark suites in {args.results}", file=sys.stderr)
        return 1
    out_dir = args.out or os.path.dirname(os.path.abspath(args.results[0]))
    os.makedirs(out_dir, exist_ok=True)
    report = build_report(records, args.results, host_times)
    print(brief(report) if args.brief else report)
    path = os.path.join(out_dir, "report.md")
    _write_atomically(path, report + "\n")
    print(f"wrote {path}")
    for path in write_plots(records, out_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
