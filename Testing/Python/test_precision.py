"""Network precision (issue 25): the setting, its resolution per device, bfloat16 autocast on the CPU with float32
sampler arithmetic, the bench's side-by-side figures and the GPU check's CPU-side behaviour."""

import json
import warnings

import pytest
import torch

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.models.diffusion.guidance import ClassifierGuidance
from DiffusionAnomalyLib.models.diffusion.sampler import LatentSampler, SamplerSettings
from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule
from DiffusionAnomalyLib.models.nets.classifier import LatentClassifier
from DiffusionAnomalyLib.models.nets.denoiser import build_denoiser, denoiser_config, eps_function
from DiffusionAnomalyLib.models.precision import (
    classifier_in_precision,
    cpu_fast_bf16,
    eps_in_precision,
    network_autocast,
    parallel_guidance,
    resolve_precision,
)
from DiffusionAnomalyLib.settings import RunSettings

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


def test_precision_is_a_run_setting_with_a_json_round_trip():
    assert RunSettings().precision == "auto"
    s = RunSettings(precision="fp32")
    assert RunSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(InputError, match="unknown precision 'fp16'; choose one of auto, fp32, bf16"):
        RunSettings(precision="fp16")


def test_auto_takes_bf16_only_where_the_hardware_runs_it_natively():
    assert resolve_precision("auto", CPU, cpu_bf16=True) == "bf16"
    assert resolve_precision("auto", CPU, cpu_bf16=False) == "fp32"
    assert resolve_precision("auto", CUDA, gpu_bf16=True) == "bf16"
    assert resolve_precision("auto", CUDA, gpu_bf16=False) == "fp32"  # e.g. a pre-Ampere GPU
    assert resolve_precision("auto", MPS) == "fp32"
    for dev in (CPU, CUDA, MPS):
        assert resolve_precision("fp32", dev) == "fp32"  # the switch that turns the fast path off
    assert resolve_precision("bf16", CPU, cpu_bf16=False) == "bf16"  # forced: emulated, slower, but it runs
    with pytest.raises(InputError, match="bf16 runs on CPU and CUDA devices only, not on mps"):
        resolve_precision("bf16", MPS)
    with pytest.raises(InputError, match="unknown precision 'half'"):
        resolve_precision("half", CPU)


def test_cpu_fast_bf16_reads_the_cpu_flags():
    assert cpu_fast_bf16(frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})) == \
        torch.backends.mkldnn.is_available()
    # AVX-512 BF16 without AMX: bfloat16 convolutions measured slower than float32 (docs/performance.md)
    assert not cpu_fast_bf16(frozenset({"avx512f", "avx512_bf16"}))
    assert not cpu_fast_bf16(frozenset({"avx2", "avx512f"}))


def test_the_autocast_context_is_built_for_cpu_and_cuda():
    """The CUDA context object is constructed (not entered) here: what can be checked without a GPU."""
    assert isinstance(network_autocast(CPU, "bf16"), torch.autocast)
    with warnings.catch_warnings():  # "CUDA is not available ... Disabling autocast" where there is none
        warnings.simplefilter("ignore")
        ctx = network_autocast(CUDA, "bf16")
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert not isinstance(network_autocast(CPU, "fp32"), torch.autocast)


@pytest.fixture(scope="module")
def tiny_nets():
    torch.manual_seed(0)
    cfg = denoiser_config("tiny")
    den = build_denoiser(cfg).eval()
    with torch.no_grad():  # MONAI zero-initialises the output convolution: give it weights, so eps is not 0
        for name, p in den.named_parameters():
            if name.startswith("out."):
                p.normal_(0, 0.05)
    return den, LatentClassifier(cfg).eval()


def test_bf16_networks_return_float32_close_to_fp32(tiny_nets):
    den, clf = tiny_nets
    x = torch.randn(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([100, 400])
    eps32 = eps_function(den)
    eps16 = eps_in_precision(eps32, CPU, "bf16")
    assert eps_in_precision(eps32, CPU, "fp32") is eps32
    with torch.no_grad():
        a, b = eps32(x, t), eps16(x, t)
    assert b.dtype == torch.float32
    assert ((a - b).norm() / a.norm()).item() < 0.05
    assert not torch.equal(a, b)  # it really ran in bfloat16
    g32 = ClassifierGuidance(clf, 1.0).log_prob_gradient(x, t)
    g16 = ClassifierGuidance(classifier_in_precision(clf, CPU, "bf16"), 1.0).log_prob_gradient(x, t)
    assert g16.dtype == torch.float32 and torch.isfinite(g16).all()
    assert torch.nn.functional.cosine_similarity(g32.flatten(), g16.flatten(), dim=0).item() > 0.99
    assert classifier_in_precision(clf, CPU, "fp32") is clf


def test_the_sampler_arithmetic_stays_float32_with_bf16_networks(tiny_nets):
    den, clf = tiny_nets
    z = torch.randn(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    st = SamplerSettings(method="ddim", noise_level=100, steps=4, guidance=10.0)
    ref = LatentSampler(eps_function(den), NoiseSchedule(), classifier=clf).reconstruct(z, st)
    fast = LatentSampler(eps_in_precision(eps_function(den), CPU, "bf16"), NoiseSchedule(),
                         classifier=classifier_in_precision(clf, CPU, "bf16")).reconstruct(z, st)
    assert fast.latent.dtype == torch.float32 and fast.network_evaluations == ref.network_evaluations
    assert ((fast.latent - ref.latent).norm() / ref.latent.norm()).item() < 0.05


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_guidance_beside_the_denoiser_gives_the_sequential_result(tiny_nets, method):
    """parallel_guidance runs the same operations on two threads: the same latent (up to float rounding), the same
    number of network evaluations, and the intra-op thread count is back afterwards."""
    den, clf = tiny_nets
    z = torch.randn(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    st = SamplerSettings(method=method, noise_level=100, steps=4, guidance=10.0, seed=5)
    threads = torch.get_num_threads()
    ref = LatentSampler(eps_function(den), NoiseSchedule(), classifier=clf).reconstruct(z, st)
    calls = []

    def eps(x, t, labels=None):
        calls.append(torch.is_grad_enabled())  # the denoiser runs without gradients in either order
        return eps_function(den)(x, t, labels)

    par = LatentSampler(eps, NoiseSchedule(), classifier=clf, parallel_guidance=True).reconstruct(z, st)
    assert par.network_evaluations == ref.network_evaluations and not any(calls)
    torch.testing.assert_close(par.latent, ref.latent, rtol=1e-4, atol=1e-5)
    assert not torch.equal(par.latent, LatentSampler(eps_function(den), NoiseSchedule(), classifier=clf).reconstruct(
        z, SamplerSettings(method=method, noise_level=100, steps=4, guidance=0.0, seed=5)).latent)  # guidance acted
    assert torch.get_num_threads() == threads
    # the fast path on the CPU takes it; fp32 and the GPU keep the sequential order
    assert parallel_guidance(CPU, "bf16") == (threads >= 2)
    assert not parallel_guidance(CPU, "fp32") and not parallel_guidance(CUDA, "bf16")


def test_an_error_in_the_guidance_thread_reaches_the_caller(tiny_nets):
    den, _ = tiny_nets

    def broken(x, t):
        raise RuntimeError("classifier exploded")

    z = torch.randn(1, 4, 8, 8, 8)
    threads = torch.get_num_threads()
    sampler = LatentSampler(eps_function(den), NoiseSchedule(), classifier=broken, parallel_guidance=True)
    with pytest.raises(RuntimeError, match="classifier exploded"):
        sampler.reconstruct(z, SamplerSettings(method="ddim", noise_level=100, steps=2, guidance=1.0))
    assert torch.get_num_threads() == threads


def test_bench_puts_fp32_and_the_fast_path_side_by_side(small_bench):
    from DiffusionAnomalyLib.evaluation.bench import run_bench, summary_table

    report = run_bench(sizes=["demo"], devices=["cpu"], steps=2, methods=("ddim",), guidance=(50.0,), rois=(2,),
                       precisions=("fp32", "bf16"), fast_default=True, network_time=False)
    fp32, bf16, fast = report["results"]
    # the fast default (DPM-Solver++ 20 steps, auto) beside the DDIM row at the first precision
    assert (fast["sampler"], fast["steps"], fast["precision"], fast["guidance"], fast["rois"]) == (
        "dpmpp", 20, "auto", 50.0, 2)
    assert fast["baseline"] == "ddim-2 fp32" and fast["speedup_vs_baseline"] == round(
        fp32["seconds"] / fast["seconds"], 3)
    assert report["fast_default"][0]["speedup_vs_baseline"] == fast["speedup_vs_baseline"]
    assert "dpmpp-20" in summary_table(report) and "x ddim-2 fp32" in summary_table(report)
    assert (fp32["resolved_precision"], bf16["resolved_precision"]) == ("fp32", "bf16")
    assert fp32["reference_s"] > 0 and "reference_s" not in bf16  # MONAI's loop once, at the first precision
    for r in (fp32, bf16):
        assert r["cpu_seconds"] > 0 and r["peak_rss_mb"] > 0 and "network_share" not in r  # (test_evaluate)
    (row,) = report["comparison"]
    assert row["bf16_speedup_vs_fp32"] == round(fp32["seconds"] / bf16["seconds"], 3)
    assert row["monai_reference_per_case_s"] > 0 and row["fp32_per_case_s"] == fp32["per_case_s"]
    assert report["environment"]["cpu_fast_bf16"] == cpu_fast_bf16()
    assert report["environment"]["conv_probe"]["grid"] == 8 and report["environment"]["conv_rate_gflop_per_s"]["cpu"][
        "bf16"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_gpu_check_without_cuda_says_it_skipped(tmp_path, capsys):
    from DiffusionAnomalyLib.app.diagnostics import gpu_check

    assert gpu_check(str(tmp_path / "g.json")) == 0
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["gpu_check"] == "skipped" and "no CUDA" in doc["reason"]


@pytest.mark.slow
def test_the_provoked_out_of_memory_run_ends_with_exit_4():
    """The GPU check's out-of-memory run, on the CPU under a 4 GiB address-space cap (the same command line)."""
    from DiffusionAnomalyLib.app.diagnostics import provoke_out_of_memory

    res = provoke_out_of_memory("cpu", memory_limit_gb=4)
    assert res["ok"], res
    assert res["exit_code"] == 4 and "out_of_memory" in res["stderr_last_line"]
