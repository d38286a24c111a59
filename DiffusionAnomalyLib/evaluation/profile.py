"""``diffusion-anomaly bench --profile``: one guided sampler call split into op classes with ``torch.profiler``.

The call is the one ``bench`` times (evaluation/bench.py ``prepare_case``: random weights, the same latent, sampler,
guidance, ROIs, steps and precision), after the same warm-up. Every op's *self* time (its own time, its children's
excluded) is put into exactly one row, so nothing is counted twice and the rows add up to the call's wall clock:

- the classifier's forward and backward pass: everything inside the ``record_function`` ranges of the guidance
  gradient (models/diffusion/guidance.py ``PROFILE_FORWARD``, ``PROFILE_BACKWARD``): the ranges' totals, Python
  inside them included; :data:`CLASSES` splits them once more in the JSON (``classifier_by_class``);
- outside them (the denoiser, the sampler's arithmetic, autocast's casts), the op classes of :data:`CLASSES` by op
  name, and ``rest`` for ops of no class (allocation, views, random numbers);
- ``python``: the wall clock minus all ops' self time (the Python between ops, the profiler's own bookkeeping).

``calls`` counts a row's outermost ops (``aten::conv3d`` -> ``aten::convolution`` -> ... is one call) and the
classifier ranges. The profiler sees the thread that started it only, so where the fast path runs the guidance
gradient beside the denoiser (``LatentSampler.parallel_guidance``) the profile runs the two one after the other, each
on the half of the threads it gets side by side: the self times are then about the CPU time of the timed call, not
its (shorter) wall clock. The profiler slows every op a little; the shares, not the seconds, are the point,
and a few steps (``--steps``) give the same shares as 50.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

from DiffusionAnomalyLib.evaluation.bench import build_networks, environment, prepare_case
from DiffusionAnomalyLib.models.diffusion.guidance import PROFILE_BACKWARD, PROFILE_FORWARD

#: Op classes by ``aten::`` op name, in the order of the table; a name in none of them is ``rest``.
CLASSES: dict[str, frozenset[str]] = {
    "convolutions": frozenset({
        "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "mkldnn_convolution", "convolution_backward",
        "mkldnn_convolution_backward", "slow_conv3d", "slow_conv3d_forward", "_slow_conv2d_forward",
        "cudnn_convolution", "convolution_overrideable", "_nnpack_spatial_convolution"}),
    "normalisation and activations": frozenset({
        "group_norm", "native_group_norm", "native_group_norm_backward", "layer_norm", "native_layer_norm",
        "native_layer_norm_backward", "batch_norm", "silu", "silu_", "silu_backward", "gelu", "gelu_backward",
        "relu", "relu_", "threshold_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward"}),
    "elementwise and reductions": frozenset({
        "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "addcmul", "addcmul_", "addcdiv", "neg", "sqrt",
        "rsqrt", "exp", "log", "pow", "clamp", "clamp_", "where", "lerp", "lerp_", "sum", "mean", "amax", "max",
        "fill_", "zero_", "eq", "ne", "gt", "lt", "abs", "sin", "cos", "dropout", "masked_fill"}),
    "attention and linear layers": frozenset({
        "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_attention_math",
        "_scaled_dot_product_flash_attention_for_cpu_backward", "bmm", "baddbmm", "softmax", "_softmax",
        "_softmax_backward_data", "log_softmax", "_log_softmax", "_log_softmax_backward_data", "einsum", "matmul",
        "linear", "mm", "addmm"}),
    "resampling": frozenset({
        "upsample_nearest3d", "upsample_nearest3d_backward", "upsample_trilinear3d", "upsample_trilinear3d_backward",
        "_upsample_nearest_exact3d", "interpolate", "avg_pool3d", "avg_pool3d_backward", "max_pool3d",
        "max_pool3d_with_indices", "max_pool3d_with_indices_backward", "adaptive_avg_pool3d"}),
    "layout reorders and casts": frozenset({
        "copy_", "_to_copy", "clone", "to_dense", "to_mkldnn", "_to_dense", "mkldnn_reorder_conv3d_weight",
        "mkldnn_reorder_conv2d_weight", "_copy_from", "_copy_from_and_resize"}),
    "concatenation (skip connections)": frozenset({"cat", "_cat", "stack"}),
}
#: The rows of the table, in order: the op classes, the classifier's two passes, the rest and the Python between ops.
ROWS = (*CLASSES, "classifier forward", "classifier backward", "rest", "python")
_RANGES = {PROFILE_FORWARD: "classifier forward", PROFILE_BACKWARD: "classifier backward"}


def op_class(name: str) -> str:
    """The :data:`CLASSES` key of an op name (``aten::`` or not), else ``rest``."""
    short = name.split("::", 1)[-1]
    return next((k for k, names in CLASSES.items() if short in names), "rest")


def _range(event) -> str | None:
    """The classifier row an event lies in (itself or an ancestor a guidance range), else None."""
    while event is not None:
        if event.name in _RANGES:
            return _RANGES[event.name]
        event = event.cpu_parent
    return None


def split_events(events, wall_s: float) -> dict:
    """The profiler's events split into :data:`ROWS` (seconds, calls), the classifier's ranges by op class and the
    ten ops with the most self time (named ``parent > op``)."""
    seconds: dict[str, float] = defaultdict(float)
    calls: Counter = Counter()
    inside: dict[str, dict[str, float]] = {r: defaultdict(float) for r in _RANGES.values()}
    top: dict[str, float] = defaultdict(float)
    for e in events:
        own = e.self_cpu_time_total / 1e6
        where, cls = _range(e), op_class(e.name)
        parent = e.cpu_parent
        if e.name in _RANGES:
            calls[_RANGES[e.name]] += 1
        elif where is None and (parent is None or op_class(parent.name) != cls):
            calls[cls] += 1
        seconds[where or cls] += own
        if where is not None and e.name not in _RANGES:
            inside[where][cls] += own
        top[f"{parent.name} > {e.name}" if parent is not None else e.name] += own
    ops = sum(seconds.values())
    seconds["python"] = max(wall_s - ops, 0.0)
    total = sum(seconds.values())
    rows = [{"row": r, "self_s": round(seconds[r], 3), "share": round(seconds[r] / total, 4) if total else 0.0,
             "calls": calls[r] if r != "python" else None} for r in ROWS]
    return {"wall_s": round(wall_s, 3), "ops_s": round(ops, 3), "rows": rows,
            "classifier_by_class": {r: {k: round(v, 3) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}
                                    for r, d in inside.items()},
            "top_ops": {k: round(v, 3) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:10]}}


def profile_case(size: str, device: torch.device, method: str, guidance: float, rois: int, steps: int, nets=None,
                 precision: str = "fp32") -> dict:
    """One sampler call of ``bench`` under ``torch.profiler`` (after a warm-up at its batch size), split by
    :func:`split_events`."""
    case = prepare_case(size, device, method, guidance, rois, steps, nets, precision, warm_up=False)
    case.sampler.reconstruct(case.z, replace(case.settings, steps=1))  # warm-up: the profiled call's shapes
    threads = torch.get_num_threads()
    side_by_side = case.sampler.parallel_guidance
    if side_by_side:  # the profiler sees its own thread only: one after the other, each on its side-by-side share
        case.sampler.parallel_guidance = False
        torch.set_num_threads(max(1, threads // 2))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with profile(activities=activities) as prof:
            t0, cpu0 = time.perf_counter(), time.process_time()
            result = case.sampler.reconstruct(case.z, case.settings)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        torch.set_num_threads(threads)
    out = {"size": size, "device": str(device), "precision": precision, "resolved_precision": case.resolved,
           "sampler": method, "guidance": guidance, "rois": rois, "steps": steps,
           "network_evaluations": result.network_evaluations, "guidance_side_by_side": side_by_side,
           "threads_per_network": max(1, threads // 2) if side_by_side else threads, "process_cpu_s": round(cpu, 3)}
    out.update(split_events(prof.events(), wall))
    return out


def run_profile(sizes=("thesis-kidney",), devices=("cpu",), steps: int = 50, methods=("ddim",),
                guidance=(100.0,), rois=(2,), precisions=("fp32", "auto")) -> dict:
    """Per size and device one guided case (the first sampler, the largest guidance and ROI count) profiled at each
    precision; the JSON-able report (``environment``, ``results``: one entry per precision)."""
    results = []
    for dev_name in devices or ["cpu"]:
        device = torch.device(dev_name)
        for size in sizes:
            nets = build_networks(size, device)
            for prec in precisions:
                results.append(profile_case(size, device, methods[0], max(guidance), max(rois), steps, nets, prec))
            del nets
    return {"environment": environment(), "profile": True, "results": results}


def profile_table(report: dict) -> str:
    """A Markdown table per configuration: op class, then self CPU seconds, share and calls per precision."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in report["results"]:
        groups[(r["size"], r["device"], r["sampler"], r["guidance"], r["rois"], r["steps"])].append(r)
    parts = []
    for (size, dev, method, g, n, steps), runs in groups.items():
        labels = [r["precision"] if r["precision"] == r["resolved_precision"] else
                  f"{r['precision']}={r['resolved_precision']}" for r in runs]
        head = "| op class | " + " | ".join(f"{lb} self CPU s | {lb} share | {lb} calls" for lb in labels) + " |"
        lines = [f"{size}, {dev}, {method} {steps} steps, guidance {g:g}, {n} ROIs", "", head,
                 "|---|" + "---:|---:|---:|" * len(runs)]
        for i, row in enumerate(ROWS):
            cells = []
            for r in runs:
                x = r["rows"][i]
                calls = "" if x["calls"] is None else str(x["calls"])
                cells += [f"{x['self_s']:.2f}", f"{100 * x['share']:.1f} %", calls]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("| **total (wall clock)** | " + " | ".join(
            f"**{r['wall_s']:.2f}** | 100 % | " for r in runs) + " |")
        lines.append("| the process's CPU time | " + " | ".join(f"{r['process_cpu_s']:.2f} | | " for r in runs) + " |")
        note = ["Self time of each op (its children excluded), each op in one row; the classifier rows are the totals "
                "of its record_function ranges (all ops inside them, and the Python between them); python = the wall "
                "clock minus all ops (on a busy machine an op's self time includes waiting for a core; the process's "
                "CPU time does not)"]
        note += [f"{lb}: the guidance gradient ran after the denoiser (beside it when timed), both on "
                 f"{r['threads_per_network']} thread(s)"
                 for lb, r in zip(labels, runs, strict=True) if r["guidance_side_by_side"]]
        lines += ["", "; ".join(note) + ". Under the profiler: the shares, not the seconds, are the point."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
