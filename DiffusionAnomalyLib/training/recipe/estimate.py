"""``train all``'s time estimates (timed iterations on random tensors of the real shapes) and its dry-run
report."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import numpy as np

from DiffusionAnomalyLib.detection.presets import get_preset
from DiffusionAnomalyLib.settings import DETERMINISTIC_SAMPLERS
from DiffusionAnomalyLib.training.recipe.layouts import LABEL_VALUES, Prepared
from DiffusionAnomalyLib.training.recipe.plan import TrainAllPlan, active_stages, latent_crop, latent_shape


# -- time estimates ------------------------------------------------------------------------------
def _probe(step: Callable[[], None], repeats: int = 1) -> float:
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def seconds_per_iteration(resolved: dict, organ: str, device, precision: str = "auto") -> dict[str, float]:
    """Seconds per training iteration of each stage, timed on random tensors of the real shapes (one iteration
    after a warm-up) at each stage's training precision, and seconds per denoising step of one ROI (the sweep)."""
    import torch

    from DiffusionAnomalyLib.models.nets.autoencoder import autoencoder_config, build_autoencoder
    from DiffusionAnomalyLib.models.nets.classifier import LatentClassifier
    from DiffusionAnomalyLib.models.nets.denoiser import build_denoiser, denoiser_config
    from DiffusionAnomalyLib.models.precision import network_autocast
    from DiffusionAnomalyLib.training.common import training_precision

    def ctx(part: str):
        return network_autocast(device, training_precision(precision, device, part))

    ae_r, den_r, clf_r = resolved["autoencoder"], resolved["denoiser"], resolved["classifier"]
    preset = get_preset(organ).with_overrides({"spacing_mm": [ae_r["spacing"]] * 3})
    shape = tuple(preset.roi_size_voxels[::-1])
    ae_cfg = autoencoder_config(ae_r["network"], in_channels=len(preset.channels))
    torch.manual_seed(0)
    ae = build_autoencoder(ae_cfg).to(device)
    x = torch.randn(ae_r["batch"], len(preset.channels), *shape, device=device)
    opt = torch.optim.Adam(ae.parameters())

    def ae_step():
        with ctx("autoencoder"):
            recon, q = ae(x)
        loss = (recon.float() - x).abs().mean() + q
        opt.zero_grad()
        loss.backward()
        opt.step()

    out = {"autoencoder": _probe(ae_step)}
    latent = latent_shape(resolved, organ)
    den_cfg = denoiser_config(den_r["network"], latent_channels=ae_cfg.embedding_dim)
    den = build_denoiser(den_cfg).to(device)
    z = torch.randn(den_r["batch"], ae_cfg.embedding_dim, *(latent_crop(resolved, organ) or latent), device=device)
    t = torch.randint(1, 1000, (den_r["batch"],), device=device)
    dopt = torch.optim.Adam(den.parameters())

    def den_step():
        with ctx("denoiser"):
            loss = den(z, timesteps=t).float().abs().mean()
        dopt.zero_grad()
        loss.backward()
        dopt.step()

    out["denoiser"] = _probe(den_step)
    clf = LatentClassifier(den_cfg).to(device)
    zc = torch.randn(clf_r["batch"], ae_cfg.embedding_dim, *latent, device=device)
    tc = torch.randint(0, 1000, (clf_r["batch"],), device=device)
    copt = torch.optim.Adam([p for p in clf.parameters() if p.requires_grad])

    def clf_step():
        with ctx("classifier"):
            loss = clf(zc, tc).float().logsumexp(1).mean()
        copt.zero_grad()
        loss.backward()
        copt.step()

    out["classifier"] = _probe(clf_step)
    z1 = z[:1]
    with torch.no_grad():
        out["denoise_step"] = _probe(lambda: den(z1, timesteps=t[:1]))
    return out


_MEASURED: dict[str, dict[str, float]] = {}


def dry_run_seconds_per_iteration(resolved: dict, organ: str, device, precision: str = "auto") -> dict[str, float]:
    """:func:`seconds_per_iteration` timed once per process and configuration, for ``--dry-run`` (repeated dry runs
    from Python, e.g. while editing a dataset, do not time the same networks again). Training itself times afresh:
    under torchrun every rank must take the same collective steps."""
    nets = {stage: {k: v for k, v in resolved[stage].items() if k not in ("iterations", "seed")}
            for stage in ("autoencoder", "denoiser", "classifier")}  # what the timing depends on, not the data
    key = json.dumps([nets, organ, str(device), precision], sort_keys=True, default=str)
    if key not in _MEASURED:
        _MEASURED[key] = seconds_per_iteration(resolved, organ, device, precision)
    return dict(_MEASURED[key])


def calibration_points(cal: dict) -> int:
    """How many map settings the calibration sweep computes: L x s x reference x samples x median filter."""
    return (len(cal["noise_levels"]) * len(cal["guidance"]) * len(cal.get("reference_values") or [0])
            * len(cal.get("samples_values") or [0]) * len(cal.get("median_filter_values") or [0]))


def postprocessing_points(cal: dict) -> int:
    """How many operating points the calibration sweep scores: thresholds x volumes x growths x (the model alone and
    each hybrid scale), at the best map or,
    with the size-balanced objective and a false-positive budget, at every map setting."""
    every = cal.get("objective") == "size-balanced" and cal.get("max_fp_per_organ") is not None
    return (len(cal["threshold_scales"]) * len(cal["min_lesion_ml_values"]) * len(cal["grow_to_values"])
            * (1 + len(cal.get("hybrid_scales") or ())) * (calibration_points(cal) if every else 1)
            * max(len(cal.get("floor_contrast_values") or ()), 1))


#: Seconds per validation case and operating point the sweep's post-processing and scoring take (a 2-core CPU;
#: 0.07 s for the kidney, 0.2 s for the liver on the demo phantoms), and per case for the baseline's map.
POSTPROCESSING_S, BASELINE_S = 0.15, 3.0


def estimate(resolved: dict, prepared: Prepared, per_it: dict[str, float], structures_per_case: int,
             prepare_s_per_case: float) -> dict[str, float]:
    """Seconds each stage is expected to take (rough: iterations x the timed iteration, plus validation; the
    calibration's maps, the baseline's and its post-processing points)."""
    cal = resolved["calibrate"]
    n_val = len(prepared.cases["validation"])
    grid = calibration_points(cal)
    steps = [min(cal["steps"], L) for L in cal["noise_levels"]]
    guided = sum(1 for s in cal["guidance"] if s > 0) / max(len(cal["guidance"]), 1)
    samples = 1.0 if cal["sampler"] in DETERMINISTIC_SAMPLERS else np.mean(cal.get("samples_values") or [1])
    per_map = structures_per_case * np.mean(steps) * per_it["denoise_step"] * (1 + 2 * guided) * samples
    n_cases = sum(len(v) for v in prepared.cases.values())
    return {"prepare": prepare_s_per_case * n_cases,
            "autoencoder": resolved["autoencoder"]["iterations"] * per_it["autoencoder"] * 1.1,
            "denoiser": resolved["denoiser"]["iterations"] * per_it["denoiser"] * 1.1,
            "classifier": resolved["classifier"]["iterations"] * per_it["classifier"] * 1.1,
            "calibrate": n_val * (grid * (per_map + 2.0) + 3.0 + BASELINE_S
                                  + postprocessing_points(cal) * POSTPROCESSING_S),
            **({"synthesizer": resolved["synthesizer"]["iterations"] * per_it["denoiser"] * 1.5}  # SPADE: ~1.5x
               if "synthesizer" in resolved else {}),
            "bundle": 1.0}


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _dry_run_report(plan: TrainAllPlan, resolved: dict, prepared: Prepared, est: dict, device) -> None:
    c = prepared.counts
    print(f"train all --dry-run: {plan.organ}, preset {plan.preset}, on {device}")
    print(f"cases: {len(prepared.cases['train'])} training, {len(prepared.cases['validation'])} validation "
          f"({prepared.split_rule})" + (f"; {len(prepared.left_out)} test cases left untouched"
                                        if prepared.left_out else ""))
    print(f"layouts: {', '.join(prepared.layouts) or '-'}; organ masks: {prepared.mask_source}; labels: "
          f"{prepared.label_source}")
    print(f"{'structures':<12} " + " ".join(f"{lab:>10}" for lab in LABEL_VALUES))
    for s in ("train", "validation"):
        print(f"{s:<12} " + " ".join(f"{c[s][lab]:>10}" for lab in LABEL_VALUES))
    if prepared.validation_sizes is not None:
        from DiffusionAnomalyLib.detection.anomaly import size_class_name

        print("validation lesions by size: " + ", ".join(f"{size_class_name(k, plan.organ)} {n}"
                                                          for k, n in prepared.validation_sizes.items()))
    for u in prepared.unusable:
        print(f"not usable: {u}")
    for w in prepared.warnings:
        print(f"warning: {w}")
    print(f"{'stage':<12} {'estimate':>10}  what")
    what = {"prepare": "read, check and write the cases",
            "autoencoder": f"{resolved['autoencoder']['iterations']} iterations, {resolved['autoencoder']['network']}",
            "denoiser": f"{resolved['denoiser']['iterations']} iterations, {resolved['denoiser']['network']}",
            "classifier": f"{resolved['classifier']['iterations']} iterations",
            "calibrate": f"{calibration_points(resolved['calibrate'])} settings x "
                         f"{len(prepared.cases['validation'])} validation cases",
            "synthesizer": f"{resolved.get('synthesizer', {}).get('iterations')} iterations (the lesion synthesizer)",
            "bundle": "the model card"}
    for s in active_stages(resolved):
        print(f"{s:<12} {_fmt_s(est[s]):>10}  {what[s]}")
    print(f"{'all':<12} {_fmt_s(sum(est.values())):>10}  (rough: timed iterations on random data)")
