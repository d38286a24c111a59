"""``diffusion-anomaly bench``: speed and memory of the samplers, as figures (never asserted in tests).

For each model size (random weights; ``demo`` = the tiny CPU network on the kidney demo latent
4 x 16 x 12 x 12, ``thesis-kidney`` = kidney thesis App. A: latent 8 x 32 x 24 x 24, multipliers
[2, 4, 8, 16]), device, sampler (DDPM, DDIM with inversion), guidance (off / on) and ROIs per batch
(1, 2) it reports:

- ``seconds`` for one sampler call, ``per_step_s``, ``per_case_s`` (a case = 2 kidney ROIs);
- ``network_s``: the same network evaluations (denoiser forward, classifier forward + backward)
  in a bare loop, and ``overhead`` = seconds / network_s - 1 (the sampler's own cost);
- ``batch_speedup``: per-case throughput of 2 ROIs in one batch over 1 ROI at a time;
- ``reference_s`` and ``speedup_vs_reference`` (DDIM): a plain loop on MONAI's ``DDIMScheduler``
  (``reversed_step`` then ``step``) with the same networks, one ROI at a time;
- ``peak_rss_mb`` and ``peak_cuda_mb``.

Targets (issue 6): overhead <= 5 %; batch speedup >= 1.6; >= 1.5x the reference; thesis-size case
with DDIM 50 steps + guidance <= 90 s on 2 CPU cores and <= 3 s on an H200; peak memory <= 4 GB
(CPU) / 8 GB (GPU).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch

from DiffusionAnomalyLib.models.diffusion.guidance import HEALTHY, ClassifierGuidance
from DiffusionAnomalyLib.models.diffusion.sampler import LatentSampler, SamplerSettings
from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule, sampling_timesteps
from DiffusionAnomalyLib.models.nets.classifier import LatentClassifier
from DiffusionAnomalyLib.models.nets.denoiser import bf16_on_cuda, build_denoiser, denoiser_config, eps_function

SIZES = {
    "demo": {"denoiser": "tiny", "latent": (4, 16, 12, 12)},
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
    ts = list(grid[:-1]) * (2 if settings.method == "ddim" else 1)
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


def bench_case(size: str, device: torch.device, method: str, guidance: float, rois: int, steps: int,
               reference: bool, nets=None) -> dict:
    den, clf = nets or build_networks(size, device)
    eps = bf16_on_cuda(eps_function(den), device)
    sampler = LatentSampler(eps, NoiseSchedule(), classifier=clf)
    z = torch.randn((rois, *SIZES[size]["latent"]), generator=torch.Generator().manual_seed(1)).to(device)
    settings = SamplerSettings(method=method, noise_level=NOISE_LEVEL, steps=steps, guidance=guidance, seed=0)
    sampler.reconstruct(z[:1], SamplerSettings(method="ddpm", noise_level=NOISE_LEVEL, steps=2))  # warm-up
    _reset_peaks(device)
    result = {}
    seconds = _timed(lambda: result.setdefault("r", sampler.reconstruct(z, settings)), device)
    nfe = result["r"].network_evaluations
    out = {"size": size, "device": str(device), "sampler": method, "guidance": guidance, "rois": rois,
           "steps": steps, "network_evaluations": nfe, "seconds": round(seconds, 3),
           "per_step_s": round(seconds / max(nfe, 1), 4), "per_case_s": round(seconds / rois * 2, 3),
           "peak_rss_mb": _peak_rss_mb(),
           "peak_cuda_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda"
           else None}
    net_s = bare_network_time(eps, clf, z, settings, device)
    out["network_s"] = round(net_s, 3)
    out["overhead"] = round(seconds / net_s - 1, 4)
    if reference and method == "ddim":
        ref = reference_ddim_time(eps, clf, z, settings, device)
        out["reference_s"] = round(ref, 3)
        out["speedup_vs_reference"] = round(ref / seconds, 3)
    return out


def run_bench(sizes=("demo", "thesis-kidney"), devices=None, steps: int = 50, repeats: int = 1,
              reference: bool = True, methods=("ddpm", "ddim"), guidance=(0.0, GUIDANCE_ON),
              rois=(1, 2)) -> dict:
    """Every configuration; returns the JSON-able report (environment, rows, and a summary per size/device)."""
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev_name in devices:
        device = torch.device(dev_name)
        for size in sizes:
            nets = build_networks(size, device)
            for method in methods:
                for g in guidance:
                    by_rois = {}
                    for n in rois:
                        best = min((bench_case(size, device, method, g, n, steps, reference, nets)
                                    for _ in range(repeats)), key=lambda r: r["seconds"])
                        by_rois[n] = best
                        rows.append(best)
                    if 1 in by_rois and 2 in by_rois:
                        speed = (by_rois[1]["seconds"] * 2) / by_rois[2]["seconds"]
                        by_rois[2]["batch_speedup"] = round(speed, 3)
    env = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "noise_level": NOISE_LEVEL, "guidance_on": GUIDANCE_ON}
    return {"environment": env, "results": rows}
