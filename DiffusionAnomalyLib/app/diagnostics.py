"""Diagnostics run from the command line: the fast path against fp32 on demo's case (``bench --agreement``), a
provoked out-of-memory run, and the GPU check (``bench --gpu-check``, ``scripts/gpu_check.sh``). They run whole
detections, so they live at the application edge; the timing itself is ``evaluation/bench.py``."""

from __future__ import annotations

import time

import torch

from DiffusionAnomalyLib.evaluation.bench import GUIDANCE_ON, bench_case, build_networks


def demo_case_agreement(device: torch.device, fast: list[str], seed: int = 1000) -> dict:
    """``demo``'s case (the kidney phantom ``seed`` with the shipped kidney-demo bundle, its recommended settings)
    run at fp32 and at each precision in ``fast``: seconds, the heatmaps' max and mean absolute difference (in the
    organ and overall) and whether the lesion tables are identical."""
    import tempfile
    from pathlib import Path

    import numpy as np
    import SimpleITK as sitk

    from DiffusionAnomalyLib.api import DetectRequest, detect
    from DiffusionAnomalyLib.models.bundle import available_bundles
    from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_phantom

    bundles = [b for b in available_bundles("kidney") if b.meta.demo]
    if not bundles:
        return {"skipped": "no shipped kidney-demo bundle"}
    out: dict = {"case": f"kidney phantom seed {seed}", "bundle": bundles[0].label, "device": str(device)}
    with tempfile.TemporaryDirectory(prefix="da-bench-") as tmp:
        case = make_phantom("kidney", seed, None)
        case_dir = write_phantom(case, Path(tmp) / "case")
        runs = {}
        for prec in ["fp32", *fast]:
            request = DetectRequest(images=(str(case_dir / "ct.nii.gz"),), out=str(Path(tmp) / prec),
                                    bundle=str(bundles[0].path), totalseg=str(case_dir / "segmentations"),
                                    settings={"seed": 0, "device": str(device), "precision": prec})
            t0 = time.perf_counter()
            res = detect(request).result
            runs[prec] = (res, time.perf_counter() - t0)
            out[f"{prec}_seconds"] = round(runs[prec][1], 2)
            out[f"{prec}_resolved"] = res.parameters.get("precision")
            out[f"{prec}_lesions"] = len(res.table)
        ref_heat = sitk.GetArrayFromImage(runs["fp32"][0].heatmap)
        organ = sitk.GetArrayFromImage(runs["fp32"][0].organ_mask) > 0
        ref_rows = [le.to_row() for le in runs["fp32"][0].table]
        for prec in fast:
            res, sec = runs[prec]
            diff = np.abs(sitk.GetArrayFromImage(res.heatmap) - ref_heat)
            out[f"{prec}_vs_fp32"] = {
                "speedup": round(runs["fp32"][1] / sec, 3),
                "heatmap_max_abs_diff": float(diff.max()), "heatmap_mean_abs_diff": float(diff.mean()),
                "heatmap_max_abs_diff_in_organ": float(diff[organ].max()),
                "heatmap_mean_abs_diff_in_organ": float(diff[organ].mean()),
                "heatmap_max_fp32": float(ref_heat.max()),
                "threshold": [runs["fp32"][0].threshold, res.threshold],
                "lesion_table_identical": [le.to_row() for le in res.table] == ref_rows,
                "lesion_voxels": [[le.voxels for le in runs["fp32"][0].table], [le.voxels for le in res.table]]}
    return out


#: --samples of the run that ``gpu_check`` makes run out of GPU memory on purpose: 2 x 200,000 demo latents
#: (7 GB) whose first feature maps alone need ~60 GB each, beyond any single GPU today.
OOM_SAMPLES = 200_000


def provoke_out_of_memory(device: str, timeout_s: float = 240, memory_limit_gb: float | None = None) -> dict:
    """``run`` on demo's case with an absurd ``--samples`` on ``device``, as a real subprocess: it must stop with the
    documented out-of-memory error (exit 4, ``out_of_memory``), not a traceback or a kill. ``memory_limit_gb`` caps
    the subprocess's address space (``worker.limit_memory``), so that on a CPU the allocation fails cleanly instead
    of the system's out-of-memory killer stepping in."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from DiffusionAnomalyLib.errors import EXIT_OUT_OF_MEMORY
    from DiffusionAnomalyLib.models.bundle import available_bundles
    from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_phantom

    bundle = next(b for b in available_bundles("kidney") if b.meta.demo)
    with tempfile.TemporaryDirectory(prefix="da-oom-") as tmp:
        case = make_phantom("kidney", 1000, None)
        case_dir = write_phantom(case, Path(tmp) / "case")
        cmd = [sys.executable, "-m", "DiffusionAnomalyLib", "run", "--bundle", str(bundle.path), "--input",
               str(case_dir / "ct.nii.gz"), "--totalseg", str(case_dir / "segmentations"), "--device", device,
               "--precision", "bf16", "--samples", str(OOM_SAMPLES), "--out", str(Path(tmp) / "out")]
        t0 = time.perf_counter()
        cap = None
        if memory_limit_gb is not None:
            from DiffusionAnomalyLib.app.worker import limit_memory

            def cap() -> None:
                limit_memory(memory_limit_gb)
        import os

        from DiffusionAnomalyLib.settings import MAX_SAMPLES_ENV

        env = {**os.environ, MAX_SAMPLES_ENV: str(OOM_SAMPLES)}  # above the bound every user run has
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, preexec_fn=cap, env=env)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return {"samples": OOM_SAMPLES, "exit_code": proc.returncode, "stderr_last_line": last[:400],
            "seconds": round(time.perf_counter() - t0, 1),
            "ok": proc.returncode == EXIT_OUT_OF_MEMORY and "out_of_memory" in last and "Traceback" not in proc.stderr}


def gpu_check(out: str | None = None) -> int:
    """The GPU check of issue 25 (< 5 min on one GPU): DDIM 50 + guidance, 2 ROIs, at demo and thesis sizes in
    bf16 autocast and fp32 (seconds per case, peak GPU memory), demo's case at fp32 and bf16 (agreement), and an
    out-of-memory run provoked on purpose (exit 4). Prints JSON; 0 when everything ran and the out-of-memory run
    ended as documented, 1 otherwise; without CUDA prints a 'skipped' report and returns 0."""
    import json

    from DiffusionAnomalyLib.imaging.outputs import write_text_atomic

    if not torch.cuda.is_available():
        report: dict = {"gpu_check": "skipped", "reason": "no CUDA GPU available to PyTorch (CPU build, no driver or "
                        "no GPU); nothing was measured"}
        text = json.dumps(report, indent=2)
        print(text)
        if out:
            write_text_atomic(out, text + "\n")
        return 0
    device = torch.device("cuda")
    t0 = time.perf_counter()
    report = {"gpu_check": "ran", "gpu": torch.cuda.get_device_name(device),
              "total_memory_mb": round(torch.cuda.get_device_properties(device).total_memory / 2**20),
              "torch": torch.__version__, "cases": [], "problems": []}
    for size in ("demo", "thesis-kidney"):
        nets = build_networks(size, device)
        for prec in ("bf16", "fp32"):
            try:
                r = bench_case(size, device, "ddim", GUIDANCE_ON, 2, 50, reference=False, nets=nets, precision=prec,
                               network_time=False)
                report["cases"].append({k: r[k] for k in ("size", "precision", "per_case_s", "per_step_s",
                                                          "peak_cuda_mb", "peak_rss_mb")})
            except Exception as exc:  # noqa: BLE001 - a check reports every failure and goes on
                report["problems"].append(f"{size} {prec}: {type(exc).__name__}: {exc}")
        del nets
        torch.cuda.empty_cache()
    thesis = [c for c in report["cases"] if c["size"] == "thesis-kidney" and c["precision"] == "bf16"]
    if thesis:
        report["targets"] = {"thesis_bf16_per_case_s_le_3": thesis[0]["per_case_s"] <= 3.0,
                             "thesis_bf16_peak_cuda_mb_le_8192": thesis[0]["peak_cuda_mb"] <= 8192}
    try:
        report["agreement"] = demo_case_agreement(device, ["bf16"])
    except Exception as exc:  # noqa: BLE001
        report["problems"].append(f"agreement: {type(exc).__name__}: {exc}")
    try:
        report["out_of_memory"] = oom = provoke_out_of_memory("cuda")
        if not oom["ok"]:
            report["problems"].append("the provoked out-of-memory run did not end with exit 4 / out_of_memory")
    except Exception as exc:  # noqa: BLE001
        report["problems"].append(f"out-of-memory run: {type(exc).__name__}: {exc}")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        write_text_atomic(out, text + "\n")
    return 1 if report["problems"] else 0
