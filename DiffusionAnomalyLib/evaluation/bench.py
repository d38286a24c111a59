"""``diffusion-anomaly bench``: speed and memory of the samplers, as figures (never asserted in tests).

For each model size (random weights; ``demo`` = the tiny CPU network on the kidney demo latent
4 x 16 x 12 x 12, ``tiny-fine`` = ``train all --preset tiny-fine``'s 4 mm kidney latent 4 x 32 x 24 x 24 with the
``tiny-3level`` denoiser, ``thesis-kidney`` = kidney thesis App. A: latent 8 x 32 x 24 x 24, multipliers
[2, 4, 8, 16]), device, sampler (DDPM, DDIM with inversion), guidance (off / on), ROIs per batch
(1, 2) and network precision (``--precisions``, default fp32 and auto = the fast path; precision.py),
side by side in one run, it reports:

- ``seconds`` (wall clock) for one sampler call and ``cpu_seconds`` (the process's CPU time: on a shared
  machine less inflated by other programs than the wall clock), ``per_step_s`` (per network evaluation),
  ``per_denoising_step_s``, ``per_case_s`` (a case = 2 kidney ROIs);
- ``network_s``: the same network evaluations (denoiser forward, classifier forward + backward)
  in a bare loop; ``network_share`` = network_s / seconds and ``overhead`` = seconds / network_s - 1;
- ``batch_speedup``: per-case throughput of 2 ROIs in one batch over 1 ROI at a time;
- ``reference_s`` and ``speedup_vs_reference`` (DDIM, first precision only): a plain loop on MONAI's
  ``DDIMScheduler`` (``reversed_step`` then ``step``) with the same networks, one ROI at a time;
- ``peak_rss_mb`` and ``peak_cuda_mb`` (the peaks are reset before each row);
- ``gflop`` (the call's convolution, matrix-product and attention FLOPs, :func:`network_gflop`), ``gflop_per_s`` and
  ``conv_rate_fraction``: that rate over the rate of a single 3D convolution measured at the start of the run at the
  row's precision (``environment.conv_rate_gflop_per_s``, :func:`conv_rate`: fp32, and bf16 in channels_last_3d),
  so how far the whole case is from the speed of its convolutions; :func:`summary_table` prints them;
- ``comparison``: per configuration, the precisions and MONAI's loop side by side;
- ``agreement`` (``--agreement``): demo's case at fp32 and the fast path: heatmap differences, lesion tables.

Targets: overhead <= 5 %; batch speedup >= 1.6; >= 1.5x the reference (issue 6); thesis-size case with DDIM
50 steps + guidance <= 90 s on 2 CPU cores (issue 25: with the fast path) and <= 3 s on an H200; peak memory
<= 4 GB (CPU) / 8 GB (GPU). ``--gpu-check`` (scripts/gpu_check.sh) is the GPU check; ``--profile`` splits one case
into op classes (evaluation/profile.py).
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from DiffusionAnomalyLib.models.diffusion.guidance import HEALTHY, ClassifierGuidance
from DiffusionAnomalyLib.models.diffusion.sampler import LatentSampler, SamplerSettings
from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule, sampling_timesteps
from DiffusionAnomalyLib.models.nets.classifier import LatentClassifier
from DiffusionAnomalyLib.models.nets.denoiser import build_denoiser, denoiser_config, eps_function
from DiffusionAnomalyLib.models.precision import (
    classifier_in_precision,
    cpu_fast_bf16,
    cpu_flags,
    eps_in_precision,
    network_layout,
    parallel_guidance,
    resolve_precision,
)
from DiffusionAnomalyLib.settings import DETERMINISTIC_SAMPLERS, FAST_DEFAULT

SIZES = {
    "demo": {"denoiser": "tiny", "latent": (4, 16, 12, 12)},
    "tiny-fine": {"denoiser": "tiny-3level", "latent": (4, 32, 24, 24)},
    "thesis-kidney": {"denoiser": "thesis-kidney", "latent": (8, 32, 24, 24)},
}
GUIDANCE_ON = 100.0
NOISE_LEVEL = 500


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peaks(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:  # Linux: writing 5 resets the process's peak RSS (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def build_networks(size: str, device: torch.device, seed: int = 0):
    """Random-weight denoiser and classifier of a named size, in eval mode on ``device``."""
    torch.manual_seed(seed)
    cfg = denoiser_config(SIZES[size]["denoiser"], latent_channels=SIZES[size]["latent"][0])
    den = build_denoiser(cfg).to(device).eval()
    clf = LatentClassifier(cfg).to(device).eval()
    return den, clf


def bare_network_time(eps, clf, z: torch.Tensor, settings: SamplerSettings, device) -> float:
    """The sampler's network evaluations without the sampler: same count, batch, timesteps and guidance."""
    grid = sampling_timesteps(settings.noise_level, settings.steps)
    ts = list(grid[:-1]) * (2 if settings.method in DETERMINISTIC_SAMPLERS else 1)  # + the DDIM inversion
    guided = list(grid[:-1]) if settings.guidance > 0 else []
    guidance = ClassifierGuidance(clf, settings.guidance)

    def run():
        with torch.no_grad():
            for t in ts:
                eps(z, torch.full((z.shape[0],), int(t), device=device, dtype=torch.long), None)
            for t in guided:
                guidance.log_prob_gradient(z, torch.full((z.shape[0],), int(t), device=device, dtype=torch.long))

    return _timed(run, device)


def reference_ddim_time(eps, clf, z: torch.Tensor, settings: SamplerSettings, device) -> float:
    """A plain loop on MONAI's DDIMScheduler: inversion (reversed_step) then denoising (step), one ROI at a time."""
    from monai.networks.schedulers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, schedule="linear_beta", beta_start=1e-4, beta_end=0.02,
                          clip_sample=False)
    sched.set_timesteps(max(1, settings.steps * 1000 // settings.noise_level))
    ts = [int(t) for t in sched.timesteps if int(t) <= settings.noise_level][: settings.steps]
    alphas = sched.alphas_cumprod.to(device)

    def run():
        for b in range(z.shape[0]):
            x = z[b: b + 1]
            with torch.no_grad():
                for t in reversed(ts):
                    e = eps(x, torch.full((1,), t, device=device, dtype=torch.long), None)
                    x, _ = sched.reversed_step(e, t, x)
            for t in ts:
                tv = torch.full((1,), t, device=device, dtype=torch.long)
                with torch.no_grad():
                    e = eps(x, tv, None)
                if settings.guidance > 0:
                    with torch.enable_grad():
                        xi = x.detach().requires_grad_(True)
                        logp = torch.log_softmax(clf(xi, tv), dim=1)[:, HEALTHY].sum()
                        (g,) = torch.autograd.grad(logp, xi)
                    e = e - settings.guidance * (1 - alphas[t]).sqrt() * g
                with torch.no_grad():
                    x, _ = sched.step(e, t, x)

    return _timed(run, device)


@dataclass
class BenchCase:
    """One configuration ready to time: the sampler (networks at ``resolved`` precision), its input and settings."""

    sampler: LatentSampler
    z: torch.Tensor
    settings: SamplerSettings
    eps: Callable
    classifier: Callable
    resolved: str


def prepare_case(size: str, device: torch.device, method: str, guidance: float, rois: int, steps: int, nets=None,
                 precision: str = "fp32", warm_up: bool = True) -> BenchCase:
    """The sampler of one configuration, as ``bench`` times it, after a short warm-up call on one ROI (oneDNN
    primitives, allocator) unless not ``warm_up``."""
    den, clf = nets or build_networks(size, device)
    resolved = resolve_precision(precision, device)
    network_layout(den, device, resolved)  # the shared denoiser: each row sets the layout of its precision
    eps = eps_in_precision(eps_function(den), device, resolved)
    clf = classifier_in_precision(clf, device, resolved)
    sampler = LatentSampler(eps, NoiseSchedule(), classifier=clf, parallel_guidance=parallel_guidance(device, resolved))
    z = torch.randn((rois, *SIZES[size]["latent"]), generator=torch.Generator().manual_seed(1)).to(device)
    settings = SamplerSettings(method=method, noise_level=NOISE_LEVEL, steps=steps, guidance=guidance, seed=0)
    if warm_up:
        sampler.reconstruct(z[:1], SamplerSettings(method="ddpm", noise_level=NOISE_LEVEL, steps=2, guidance=guidance))
    return BenchCase(sampler, z, settings, eps, clf, resolved)


def bench_case(size: str, device: torch.device, method: str, guidance: float, rois: int, steps: int,
               reference: bool, nets=None, precision: str = "fp32", network_time: bool = True,
               conv_rates: dict[str, float] | None = None) -> dict:
    """One sampler call timed (after a warm-up), with the bare network loop and MONAI's reference beside it; with
    ``conv_rates`` (:func:`conv_rate` per resolved precision) the share of that rate the call's FLOPs reach."""
    case = prepare_case(size, device, method, guidance, rois, steps, nets, precision)
    sampler, z, settings, eps, clf, resolved = (case.sampler, case.z, case.settings, case.eps, case.classifier,
                                                case.resolved)
    _reset_peaks(device)
    result = {}
    cpu0 = time.process_time()
    seconds = _timed(lambda: result.setdefault("r", sampler.reconstruct(z, settings)), device)
    cpu_seconds = time.process_time() - cpu0
    nfe = result["r"].network_evaluations
    steps_done = len(sampling_timesteps(NOISE_LEVEL, steps)) - 1
    out = {"size": size, "device": str(device), "precision": precision, "resolved_precision": resolved,
           "sampler": method, "guidance": guidance, "rois": rois, "steps": steps, "network_evaluations": nfe,
           "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
           "per_step_s": round(seconds / max(nfe, 1), 4),
           "per_denoising_step_s": round(seconds / steps_done, 4), "per_case_s": round(seconds / rois * 2, 3),
           "peak_rss_mb": _peak_rss_mb(),
           "peak_cuda_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda"
           else None}
    gflop = case_gflop(size, rois, nfe, steps_done if guidance > 0 else 0)
    out["gflop"] = round(gflop, 1)
    out["gflop_per_s"] = round(gflop / seconds, 1)
    if conv_rates and conv_rates.get(resolved):
        out["conv_rate_fraction"] = round(gflop / seconds / conv_rates[resolved], 4)
    if network_time:
        net_s = bare_network_time(eps, clf, z, settings, device)
        out["network_s"] = round(net_s, 3)
        out["network_share"] = round(net_s / seconds, 4)
        out["overhead"] = round(seconds / net_s - 1, 4)
    if reference and method == "ddim":
        ref = reference_ddim_time(eps, clf, z, settings, device)
        out["reference_s"] = round(ref, 3)
        out["speedup_vs_reference"] = round(ref / seconds, 3)
    return out


def network_gflop(size: str, rois: int) -> tuple[float, float]:
    """GFLOP of one denoiser forward and of one classifier gradient (forward + input gradient) at batch ``rois``:
    ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matrix products, attention; elementwise work is not
    counted) on meta-device copies of the networks at batch 1, so nothing is computed, times ``rois``."""
    den, grad = _network_gflop_one(size)
    return den * rois, grad * rois


@functools.lru_cache(maxsize=4)
def _network_gflop_one(size: str) -> tuple[float, float]:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = denoiser_config(SIZES[size]["denoiser"], latent_channels=SIZES[size]["latent"][0])
    with torch.device("meta"):
        den = build_denoiser(cfg).eval()
        clf = LatentClassifier(cfg).eval().requires_grad_(False)  # the gradient is taken for the input only
        z = torch.zeros((1, *SIZES[size]["latent"]))
        t = torch.full((1,), NOISE_LEVEL // 2, dtype=torch.long)
    with FlopCounterMode(display=False) as count, torch.no_grad():
        den(z, timesteps=t)
    den_flop = count.get_total_flops()
    with FlopCounterMode(display=False) as count:  # backward(inputs=...): autograd.grad trips the module tracker
        x = z.detach().requires_grad_(True)
        torch.log_softmax(clf(x, t), dim=1)[:, HEALTHY].sum().backward(inputs=[x])
    return den_flop / 1e9, count.get_total_flops() / 1e9


def case_gflop(size: str, rois: int, denoiser_evaluations: int, gradients: int) -> float:
    """GFLOP of a sampler call: its denoiser evaluations and classifier gradients (:func:`network_gflop`)."""
    den, grad = network_gflop(size, rois)
    return den * denoiser_evaluations + grad * gradients


#: The convolution of :func:`conv_rate`: 64 -> 64 channels, 3 x 3 x 3, on a 2 x 64 x 32^3 input (padding 1).
CONV_PROBE = {"channels": 64, "kernel": 3, "batch": 2, "grid": 32}


def conv_rate(device: torch.device, precision: str, seconds: float = 0.5) -> float:
    """GFLOP/s of one 3D convolution (:data:`CONV_PROBE`) with this process's threads, the best call of about
    ``seconds``: float32 contiguous, or bfloat16 in ``channels_last_3d`` (the layout oneDNN runs it fastest in,
    AMX where the CPU has it). 2 x batch x out x in x kernel^3 x grid^3 FLOPs per call. Where the first call alone
    takes ``seconds`` or more (bfloat16 emulated on a CPU without native support: about a minute at the probe's
    size) its rate is the figure, primitive creation included."""
    c, k, b, g = (CONV_PROBE[key] for key in ("channels", "kernel", "batch", "grid"))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    fmt = torch.channels_last_3d if precision == "bf16" else torch.contiguous_format
    conv = torch.nn.Conv3d(c, c, k, padding=k // 2).to(device=device, dtype=dtype, memory_format=fmt).eval()
    x = torch.randn(b, c, g, g, g, device=device, dtype=dtype).contiguous(memory_format=fmt)
    flop = 2 * b * c * c * k**3 * g**3
    best, spent, calls = float("inf"), 0.0, 0
    with torch.no_grad():
        first = _timed(lambda: conv(x), device)  # warm-up: the primitive is created
        if first >= seconds:
            return flop / first / 1e9
        while calls < 2 or (spent < seconds and calls < 200):
            dt = _timed(lambda: conv(x), device)
            best, spent, calls = min(best, dt), spent + dt, calls + 1
    return flop / best / 1e9


def synthesize_time(device: torch.device, precision: str, steps: int = 50, jumps: int = 2,
                    map_guidance: float = 1.0) -> dict:
    """``synthesize --method diffusion`` on one kidney ROI (the tiny presets, random weights, 2 mm: 48 x 48 x 64
    voxels, latent 4 x 16 x 12 x 12) with a 20 mm lesion: encode, RePaint inpainting with classifier-free guidance
    on the map, decode. Seconds and network evaluations."""
    from DiffusionAnomalyLib.models.nets.autoencoder import LatentCodec, autoencoder_config, build_autoencoder
    from DiffusionAnomalyLib.models.nets.synthesizer import (
        build_synthesizer,
        condition_maps,
        guided_eps,
        synthesizer_config,
    )
    from DiffusionAnomalyLib.models.precision import network_autocast

    torch.manual_seed(0)
    codec = LatentCodec(build_autoencoder(autoencoder_config("tiny")).to(device).eval())
    net = build_synthesizer(synthesizer_config("tiny")).to(device).eval()
    x = torch.randn(1, 1, 64, 48, 48, device=device)
    zz, yy, xx = torch.meshgrid(*(torch.arange(n, device=device) for n in (64, 48, 48)), indexing="ij")
    lesion = ((zz - 32) ** 2 + (yy - 24) ** 2 + (xx - 24) ** 2 < 25)[None]
    prec = resolve_precision(precision, device)
    sampler = None

    def run() -> None:
        nonlocal sampler
        with torch.no_grad(), network_autocast(device, prec):
            z0 = codec.encode(x)
            maps = condition_maps(lesion, tuple(z0.shape[2:]))
            region = torch.nn.functional.max_pool3d((maps[:, 1:] > 0).float(), 3, stride=1, padding=1)
            sampler = LatentSampler(guided_eps(net, maps, map_guidance), NoiseSchedule())
            z = sampler.reconstruct(z0, SamplerSettings(method="inpaint", noise_level=999, steps=steps, guidance=0.0,
                                                        resample_jumps=jumps), mask=region).latent
            codec.decode(z)

    seconds = _timed(run, device)
    return {"device": str(device), "precision": prec, "steps": steps, "resample_jumps": jumps,
            "map_guidance": map_guidance, "seconds": round(seconds, 2),
            "network_evaluations": sampler._nfe * (2 if map_guidance else 1)}


def run_bench(sizes=("demo", "thesis-kidney"), devices=None, steps: int = 50, repeats: int = 1,
              reference: bool = True, methods=("ddpm", "ddim"), guidance=(0.0, GUIDANCE_ON),
              rois=(1, 2), precisions=("fp32", "auto"), network_time: bool = True,
              agreement=None, synthesize: bool = False, fast_default: bool = False) -> dict:
    """Every configuration at every precision, side by side in one run; returns the JSON-able report (environment
    with the convolution rates of :func:`conv_rate`, rows, a ``comparison`` per configuration: fp32 against the fast
    path and MONAI's loop, and, with ``agreement``, the fast path's heatmap and lesion table against fp32 on the demo
    case); with ``fast_default``, per size one more row: ``settings.FAST_DEFAULT`` at the largest guidance and ROI
    count, and its speedup over the first precision's DDIM row in ``fast_default``.

    MONAI's reference loop runs once per configuration, with the networks at the first precision listed (fp32 by
    default)."""
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows, comparison, agreements, rates, fast = [], [], [], {}, []
    for dev_name in devices:
        device = torch.device(dev_name)
        conv_rates = {r: round(conv_rate(device, r), 1) for r in sorted({resolve_precision(p, device)
                                                                          for p in precisions})}
        rates[str(device)] = conv_rates
        for size in sizes:
            nets = build_networks(size, device)
            for method in methods:
                for g in guidance:
                    for n in rois:
                        by_precision = {}
                        for k, prec in enumerate(precisions):
                            best = min((bench_case(size, device, method, g, n, steps, reference and k == 0, nets,
                                                   prec, network_time, conv_rates) for _ in range(repeats)),
                                       key=lambda r: r["seconds"])
                            by_precision[prec] = best
                            rows.append(best)
                        comparison.append(_compare(by_precision, precisions))
            for prec in precisions:  # batch speedup: 2 ROIs in one batch over 1 ROI at a time
                for method in methods:
                    for g in guidance:
                        one = [r for r in rows if _same(r, size, dev_name, prec, method, g, 1)]
                        two = [r for r in rows if _same(r, size, dev_name, prec, method, g, 2)]
                        if one and two:
                            two[0]["batch_speedup"] = round(one[0]["seconds"] * 2 / two[0]["seconds"], 3)
            if fast_default:
                fast.append(_fast_default_row(size, device, max(guidance), max(rois), nets, network_time,
                                              conv_rates, rows, precisions[0], steps))
                rows.append(fast[-1])
            del nets
        if agreement:  # app.diagnostics.demo_case_agreement (a detection run, from the application layer)
            agreements.append(agreement(device, [p for p in precisions if p != "fp32"] or ["auto"]))
    env = environment()
    env["conv_rate_gflop_per_s"] = rates
    env["conv_probe"] = dict(CONV_PROBE)
    report = {"environment": env, "results": rows, "comparison": comparison}
    if fast_default:
        report["fast_default"] = [{k: r[k] for k in ("size", "device", "sampler", "steps", "precision", "guidance",
                                                     "rois", "per_case_s", "peak_rss_mb", "speedup_vs_baseline",
                                                     "baseline") if k in r} for r in fast]
    if agreement:
        report["agreement"] = agreements
    if synthesize:  # one lesion of synthesize --method diffusion, per device and precision
        report["synthesize"] = [synthesize_time(torch.device(d), p) for d in devices for p in precisions]
    return report


def _fast_default_row(size: str, device: torch.device, guidance: float, rois: int, nets, network_time: bool,
                      conv_rates: dict, rows: list[dict], baseline_precision: str, steps: int) -> dict:
    """``settings.FAST_DEFAULT`` timed as :func:`bench_case`, with its speedup over the run's DDIM row at the
    baseline precision (``steps``, same size, device, guidance and ROIs) where there is one."""
    row = bench_case(size, device, FAST_DEFAULT["sampler"], guidance, rois, FAST_DEFAULT["steps"], False, nets,
                     FAST_DEFAULT["precision"], network_time, conv_rates)
    row["fast_default"] = True
    base = [r for r in rows if _same(r, size, str(device), baseline_precision, "ddim", guidance, rois)]
    if base:
        row["baseline"] = f"ddim-{steps} {baseline_precision}"
        row["speedup_vs_baseline"] = round(base[0]["seconds"] / row["seconds"], 3)
    return row


def environment() -> dict:
    """The machine and the software of a report (threads, whether ``auto`` takes bfloat16 and the CPU's bfloat16
    flags, load average, CUDA card)."""
    return {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "cpu_count": os.cpu_count(),
            "cpu_fast_bf16": cpu_fast_bf16(), "cpu_bf16_flags": sorted(f for f in cpu_flags() if "bf16" in f),
            "load_average": _load_average(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "noise_level": NOISE_LEVEL, "guidance_on": GUIDANCE_ON}


def summary_table(report: dict) -> str:
    """The rows of a :func:`run_bench` report as a text table: seconds per case, achieved GFLOP/s and the fraction of
    the measured convolution rate at the row's precision."""
    rates = report["environment"].get("conv_rate_gflop_per_s", {})
    lines = ["convolution rate (GFLOP/s, one 64->64 3x3x3 Conv3d on 2x64x32^3): " + "; ".join(
        f"{dev} " + ", ".join(f"{p} {r:g}" for p, r in by.items()) for dev, by in rates.items()),
        f"{'size':<14}{'device':<8}{'sampler':<12}{'guid.':>6}{'rois':>5}{'precision':>11}{'s/case':>9}"
        f"{'GFLOP/s':>9}{'of conv':>9}"]
    for r in report["results"]:
        prec = r["precision"] if r["precision"] == r["resolved_precision"] else \
            f"{r['precision']}={r['resolved_precision']}"
        frac = f"{r['conv_rate_fraction']:.1%}" if "conv_rate_fraction" in r else "-"
        sampler = f"{r['sampler']}-{r['steps']}"
        speedup = f"  {r['speedup_vs_baseline']:.2f}x {r['baseline']}" if "speedup_vs_baseline" in r else ""
        lines.append(f"{r['size']:<14}{r['device']:<8}{sampler:<12}{r['guidance']:>6g}{r['rois']:>5}{prec:>11}"
                     f"{r['per_case_s']:>9.2f}{r['gflop_per_s']:>9.1f}{frac:>9}{speedup}")
    return "\n".join(lines)


def _same(r: dict, size, dev, prec, method, g, n) -> bool:
    return (r["size"], r["device"], r["precision"], r["sampler"], r["guidance"], r["rois"]) == (
        size, str(torch.device(dev)), prec, method, g, n)


def _compare(by_precision: dict, precisions) -> dict:
    """One configuration, side by side: seconds per case at each precision, the speedup over the first, MONAI."""
    base = by_precision[precisions[0]]
    out = {k: base[k] for k in ("size", "device", "sampler", "guidance", "rois", "steps")}
    for prec in precisions:
        r = by_precision[prec]
        label = prec if prec == r["resolved_precision"] else f"{prec}={r['resolved_precision']}"
        out[f"{label}_per_case_s"] = r["per_case_s"]
        out[f"{label}_cpu_s"] = r["cpu_seconds"]
        out[f"{label}_per_denoising_step_s"] = r["per_denoising_step_s"]
        out[f"{label}_gflop_per_s"] = r["gflop_per_s"]
        if "conv_rate_fraction" in r:
            out[f"{label}_conv_rate_fraction"] = r["conv_rate_fraction"]
        if "network_share" in r:
            out[f"{label}_network_share"] = r["network_share"]
        out[f"{label}_peak_rss_mb"] = r["peak_rss_mb"]
        if r["peak_cuda_mb"] is not None:
            out[f"{label}_peak_cuda_mb"] = r["peak_cuda_mb"]
        if prec != precisions[0]:
            out[f"{label}_speedup_vs_{precisions[0]}"] = round(base["seconds"] / r["seconds"], 3)
            out[f"{label}_cpu_ratio_vs_{precisions[0]}"] = round(base["cpu_seconds"] / max(r["cpu_seconds"], 1e-9),
                                                                  3)
    if "reference_s" in base:
        out["monai_reference_per_case_s"] = round(base["reference_s"] / base["rois"] * 2, 3)
    return out


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
