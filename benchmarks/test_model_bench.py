"""Model-level benchmarks of DSNO (dsno.model), with its temporal layers on each provider.

    train_step                  one training step (forward, DSNO's weighted L1 loss over the M time
                                points, backward, Adam step) of the preset at its batch size
    train_step_compiled         the same with the model under torch.compile(fullgraph=True) (DSNO's
                                fp32 layer and the fused backends; Inductor on a GPU; in smoke mode
                                aot_eager, which checks the whole-model trace in seconds; not in the
                                CPU set, where Inductor's compile would not fit a 2-core machine)
    sample_one_pass             one forward pass from noise to the whole trajectory
    sample_one_pass_cudagraph   the same, captured once in a CUDA graph and replayed (GPU only)
    sample_teacher_ddim512      the teacher's 512-step DDIM with the same backbone (no temporal layers;
                                provider "teacher")
    temporal_share              not a timing: the share of one profiled training step spent in the
                                temporal layers (extra_info "temporal_share"), for DSNO's layer and
                                the fused backends

On a GPU: the "cifar10" preset at batch 32 under bf16 autocast; on the CPU: "tiny" at batch 8 in fp32
(smoke: batch 2). The shape is named "<preset>-b<batch>"; the report divides the sampling times by the
batch for the time per image. Model results have no byte floor (bytes and gbps are None) and no
kernel-only time (a step launches thousands of kernels).
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

import dsno_kernels
from benchmarks import baselines, harness
from benchmarks.conftest import bench_device_name, bench_set_name, provider_selected

MODEL_OPS = ("train_step", "sample_one_pass", "sample_teacher_ddim512")
COMPILED, CUDA_GRAPH, SHARE = "train_step_compiled", "sample_one_pass_cudagraph", "temporal_share"
TEMPORAL_RANGE = "dsno_temporal_layer"  # the profiler range around each temporal layer's forward
DDIM_STEPS = 512
TEACHER = "teacher"


@dataclasses.dataclass(frozen=True)
class ModelOpCase:
    model: harness.ModelCase
    op: str
    provider: str

    @property
    def direction(self) -> str:
        return "fwd+bwd" if self.op in ("train_step", COMPILED, SHARE) else "fwd"

    @property
    def id(self) -> str:
        return f"{self.model.name}-{self.model.dtype}-{self.op}-{self.provider}"


def model_op_cases(config) -> list[ModelOpCase]:
    device = bench_device_name(config)
    model = harness.MODEL_CASES[bench_set_name(config)]
    providers = [
        p
        for p in (*baselines.BASELINE_PROVIDERS, *baselines.KERNEL_PROVIDERS)
        if baselines.KERNEL_DEVICE.get(p, device) == device and provider_selected(config, p)
    ]
    cases = [ModelOpCase(model, op, p) for op in MODEL_OPS[:2] for p in providers]
    if provider_selected(config, TEACHER):
        cases.append(ModelOpCase(model, "sample_teacher_ddim512", TEACHER))
    # DSNO's own layer against the fused backends (not the other baselines: they cost device time
    # and say nothing new about compiling, graphs or the share).
    fused_and_dsno = [p for p in providers if p == "dsno_fft" or p not in baselines.BASELINE_PROVIDERS]
    if bench_set_name(config) == "gpu":
        cases += [ModelOpCase(model, COMPILED, p) for p in fused_and_dsno]
    elif bench_set_name(config) == "smoke":  # the trace of the fused ops is what smoke checks (dsno_fft's takes 20 s)
        cases += [ModelOpCase(model, COMPILED, p) for p in fused_and_dsno if p != "dsno_fft"]
    if device == "cuda":
        cases += [ModelOpCase(model, CUDA_GRAPH, p) for p in fused_and_dsno]
    cases += [ModelOpCase(model, SHARE, p) for p in fused_and_dsno]
    return cases


def pytest_generate_tests(metafunc):
    if "model_op_case" in metafunc.fixturenames:
        cases = model_op_cases(metafunc.config)
        metafunc.parametrize("model_op_case", cases, ids=[case.id for case in cases])


def _dsno_model():
    return pytest.importorskip("dsno.model", reason="the DSNO model (dsno.model) is not there yet")


def _autocast(device: str, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _inputs(config, batch: int, device: str):
    from dsno.schedule import output_time_points

    M = config.num_time_points
    logsnr = output_time_points(DDIM_STEPS, M).logsnr.to(device=device, dtype=torch.float32)
    noise = torch.randn(batch, config.in_channels, config.image_size, config.image_size, device=device)
    return noise, logsnr


def compile_backend(device: str) -> str:
    """Inductor on a GPU; aot_eager on the CPU (smoke): the same full-graph trace, no code generation."""
    return "inductor" if device == "cuda" else "aot_eager"


def make_train_step(case: ModelOpCase, device: str):
    model = _dsno_model().build_model(case.model.preset).to(device).train()
    forward = model
    if case.op == COMPILED:
        forward = torch.compile(model, fullgraph=True, backend=compile_backend(device))
    noise, logsnr = _inputs(model.config, case.model.batch, device)
    target = torch.randn(noise.shape[0], logsnr.shape[0], *noise.shape[1:], device=device)
    loss_weight = torch.clamp(torch.exp(0.5 * logsnr), 1.0, 1e4).view(1, -1, 1, 1, 1)  # DSNO's weighting
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)

    def train_step():
        with _autocast(device, case.model.dtype):
            out = forward(noise, logsnr)
        loss = (loss_weight * (out.float() - target).abs()).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, train_step


def make_sample_one_pass(case: ModelOpCase, device: str):
    model = _dsno_model().build_model(case.model.preset).to(device).eval()
    noise, logsnr = _inputs(model.config, case.model.batch, device)

    def sample_one_pass():
        with torch.no_grad(), _autocast(device, case.model.dtype):
            model(noise, logsnr)

    return model, sample_one_pass


def capture_cuda_graph(call):
    """`call` (fixed input and output tensors) captured once in a CUDA graph; returns its replay.
    Warmed up on a side stream first, as torch.cuda.graphs asks (autotuning, allocator, cuBLAS)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    torch.cuda.synchronize()
    return graph.replay


@contextlib.contextmanager
def _temporal_ranges(model):
    """A profiler range around each temporal layer's forward (an instance attribute shadows the method)."""
    layers = _dsno_model().temporal_layers(model)
    for layer in layers:

        def marked(*args, _forward=layer.forward_time_points, **kwargs):
            with torch.profiler.record_function(TEMPORAL_RANGE):
                return _forward(*args, **kwargs)

        layer.forward_time_points = marked
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward_time_points


def temporal_layer_share(model, step, device: str) -> float:
    """The share of one profiled `step` spent in the temporal layers: the ops inside their forward
    ranges plus the backward nodes those ops created (matched by autograd sequence number), over all
    ops of the step. Device time on a GPU (kernels, wherever the thread that launched them), op time on
    the CPU."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with _temporal_ranges(model), torch.profiler.profile(activities=activities) as profile:
        step()
        harness.synchronize(device)
    events = [e for e in profile.events() if e.device_type == torch.autograd.DeviceType.CPU]

    def spent(event) -> float:
        return event.device_time_total if device == "cuda" else event.cpu_time_total

    def descendants(event):
        for child in event.cpu_children:
            yield child
            yield from descendants(child)

    ranges = [e for e in events if e.name == TEMPORAL_RANGE]
    assert ranges, "the profile has no temporal-layer ranges"
    created = {d.sequence_nr for r in ranges for d in descendants(r) if d.sequence_nr >= 0}
    backward = [
        e for e in events if e.name.startswith("autograd::engine::evaluate_function") and e.sequence_nr in created
    ]
    assert backward, "the profile has no backward nodes of the temporal layers"
    total = sum(spent(e) for e in events if e.cpu_parent is None)
    return (sum(map(spent, ranges)) + sum(map(spent, backward))) / total


def make_teacher_ddim(case: ModelOpCase, device: str):
    """Deterministic DDIM (x0-prediction) over the 512-step grid the DSNO trajectories come from:
    x_s = alpha_s x0 + sigma_s (x_t - alpha_t x0) / sigma_t."""
    from dsno.schedule import LogSNRSchedule, alpha_sigma, time_grid

    backbone = _dsno_model().build_backbone(case.model.preset).to(device).eval()
    noise, _ = _inputs(backbone.config, case.model.batch, device)
    logsnr = LogSNRSchedule().logsnr(time_grid(DDIM_STEPS))
    alpha, sigma = alpha_sigma(logsnr)
    coef_x0 = (alpha[1:] - sigma[1:] * alpha[:-1] / sigma[:-1]).tolist()
    coef_x = (sigma[1:] / sigma[:-1]).tolist()
    logsnr_per_image = logsnr[:-1, None].expand(-1, noise.shape[0]).to(device=device, dtype=torch.float32)

    def sample(steps: int = DDIM_STEPS):
        x = noise
        with torch.no_grad(), _autocast(device, case.model.dtype):
            for i in range(steps):
                x0 = backbone(x, logsnr_per_image[i])
                x = coef_x0[i] * x0 + coef_x[i] * x
        return x

    return sample


MODEL_SECONDS_FACTOR = 4  # a model step is far longer than a layer call: time it for longer


def test_model(benchmark, model_op_case, bench_device, bench_seconds, copy_gbps):
    case = model_op_case
    benchmark.group = f"{case.op} {case.model.dtype} {case.model.name}"
    if case.provider != TEACHER:
        reason = baselines.provider_unavailable_reason(case.provider, bench_device)
        if reason is not None:
            pytest.skip(reason)
    if case.op == "sample_teacher_ddim512":
        sample = make_teacher_ddim(case, bench_device)
        if benchmark.disabled:  # smoke: the code path, not 512 steps
            benchmark.pedantic(sample, args=(2,))
        else:
            sample(4)  # warm up: allocator, cuDNN/cuBLAS heuristics
            rounds = 2 if bench_device == "cuda" else 1
            benchmark.pedantic(sample, rounds=rounds, iterations=1, warmup_rounds=0)
    else:
        maker = make_sample_one_pass if case.op in ("sample_one_pass", CUDA_GRAPH) else make_train_step
        model, call = maker(case, bench_device)
        with baselines.temporal_layers_on(model, case.provider) as num_layers:
            assert num_layers > 0, "the model has no dsno_kernels temporal layers"
            if case.op == SHARE:
                call()  # warm up: the profile should see steady-state work
                share = {}
                benchmark.pedantic(lambda: share.update(value=temporal_layer_share(model, call, bench_device)))
                benchmark.extra_info["temporal_share"] = share["value"]
            else:
                if case.op == CUDA_GRAPH:
                    call = capture_cuda_graph(call)
                harness.run_benchmark(
                    benchmark,
                    call,
                    bench_device,
                    seconds=MODEL_SECONDS_FACTOR * bench_seconds,
                    warmup_calls=2,
                    min_rounds=3,
                    max_rounds=50,
                    max_iterations=1,
                    kernel_only=False,
                )
    harness.record(
        benchmark,
        provider=case.provider,
        op=case.op,
        direction=case.direction,
        dtype=case.model.dtype,
        shape=case.model.name,
        nbytes=None,
        copy_gbps=copy_gbps,
        device=bench_device,
    )


# ------------------------------------------------------------------------------------------------
# The provider swap keeps the model's function (not a benchmark)


@pytest.mark.parametrize("provider", [*baselines.BASELINE_PROVIDERS, *baselines.KERNEL_PROVIDERS])
def test_temporal_layers_on_gives_the_same_model(provider, bench_device):
    reason = baselines.provider_unavailable_reason(provider, bench_device)
    if reason is not None:
        pytest.skip(reason)
    model_module = _dsno_model()
    model = model_module.build_model("tiny").to(bench_device).eval()
    # The model starts with zero last layers (its output is 0) and near-zero temporal weights: give
    # every matrix random values so that the output depends on what the temporal layers compute.
    for parameter in model.parameters():
        if parameter.dim() > 1:
            torch.nn.init.normal_(parameter, std=0.05)
    for layer in model_module.temporal_layers(model):
        torch.nn.init.normal_(layer.weight, std=0.3 / layer.in_channels)
    noise, logsnr = _inputs(model.config, 2, bench_device)
    with torch.no_grad():
        with baselines.temporal_layers_on(model, "torch_fft"):
            expected = model(noise, logsnr)
        with baselines.temporal_layers_on(model, provider) as num_layers:
            got = model(noise, logsnr)
            assert num_layers == len(model_module.temporal_layers(model)) > 0
            expected_backend = "reference" if provider == "torch_fft" else provider
            assert {layer.backend for layer in model_module.temporal_layers(model)} == {expected_backend}
    # fp32 throughout; on a GPU the fused kernels' fp32 dots may run in tf32 (~3e-4 relative per layer).
    tf32 = provider in baselines.KERNEL_PROVIDERS and dsno_kernels.get_backend(provider).fp32_via_tf32_on_cuda
    tol = 2e-3 if bench_device == "cuda" and tf32 else 1e-4
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    assert {layer.backend for layer in model_module.temporal_layers(model)} == {model.config.backend}
    assert provider in baselines.KERNEL_PROVIDERS or provider not in {
        b.name for b in dsno_kernels.registered_backends()
    }
