"""The hand-written parts we keep, checked against the field's libraries that do the same job.

AUROC/AUPRC against scikit-learn, the DDIM step against MONAI's ``DDIMScheduler``, the parameter EMA
against ``torch.optim.swa_utils.AveragedModel`` and its closed form, the FROC points against MONAI's
``compute_froc_curve_data``, the bundle-schema validator against ``jsonschema``. Why each stays hand-written:
docs/method.md (Libraries).
"""

import numpy as np
import pytest
import torch
from torch import nn

from DiffusionAnomalyLib.evaluation.metrics import voxel_auprc, voxel_auroc
from DiffusionAnomalyLib.models.diffusion.ddim import ddim_reverse_step, ddim_step
from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule, sampling_timesteps
from DiffusionAnomalyLib.training.common import EMA


# -- AUROC / AUPRC ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n,decimals,prevalence", [(50, 1, 0.3), (2000, 2, 0.05), (1_000_000, 3, 0.01)])
def test_voxel_auroc_and_auprc_equal_scikit_learn_with_ties(n, decimals, prevalence):
    """Scores rounded to ``decimals`` so that many voxels tie. scikit-learn's ``average_precision_score`` is the
    same step-wise sum over distinct thresholds, sum (R_k - R_{k-1}) P_k, without interpolation, as ours, so both
    metrics must agree to rounding; the largest case is the size of an organ's voxels."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is part of the test extra")
    rng = np.random.default_rng(n)
    truth = rng.random(n) < prevalence
    score = np.round(rng.random(n) + 0.5 * truth, decimals).astype(np.float32)  # informative, with ties
    mask = rng.random(n) < 0.8
    for m in (None, mask):
        sel = slice(None) if m is None else m
        assert voxel_auroc(score, truth, m) == pytest.approx(
            sklearn_metrics.roc_auc_score(truth[sel], score[sel]), abs=1e-12)
        assert voxel_auprc(score, truth, m) == pytest.approx(
            sklearn_metrics.average_precision_score(truth[sel], score[sel]), abs=1e-12)


def test_voxel_auroc_and_auprc_equal_scikit_learn_when_all_scores_tie():
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is part of the test extra")
    truth = np.array([1, 0, 0, 1, 0, 0, 0], bool)
    score = np.full(truth.shape, 0.25)
    assert voxel_auroc(score, truth) == sklearn_metrics.roc_auc_score(truth, score) == 0.5
    assert voxel_auprc(score, truth) == pytest.approx(sklearn_metrics.average_precision_score(truth, score))
    assert voxel_auprc(score, truth) == pytest.approx(2 / 7)  # one threshold: recall 1 at the prevalence


# -- DDIM step ---------------------------------------------------------------------------------------
def _monai_ddim(kind: str, inference_steps: int, alpha_bar: np.ndarray | None = None):
    from monai.networks.schedulers import DDIMScheduler

    schedule = {"linear": "linear_beta", "scaled_linear": "scaled_linear_beta"}[kind]
    sched = DDIMScheduler(num_train_timesteps=1000, schedule=schedule, clip_sample=False)
    sched.set_timesteps(inference_steps)
    if alpha_bar is not None:
        sched.alphas_cumprod = torch.as_tensor(alpha_bar[1:], dtype=torch.float64)
    return sched


def _eps(x: torch.Tensor, t: int) -> torch.Tensor:
    """A deterministic, x- and t-dependent stand-in for a denoiser."""
    return 0.3 * torch.tanh(x) + t / 2000.0


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
def test_noise_schedule_equals_monais_shifted_by_one(kind):
    """MONAI numbers timesteps from 0 (its ``alphas_cumprod[k]`` already includes beta_1) and keeps a float32 table;
    ours has alpha_bar[0] = 1 for clean data, so MONAI's k is our t = k + 1. Agreement is to float32 rounding."""
    ours = NoiseSchedule(kind=kind).alpha_bar
    monai_table = _monai_ddim(kind, 50).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(monai_table, ours[1:], rtol=2e-6)  # found: 3.6e-7 linear, 7.5e-7 scaled
    assert ours[0] == 1.0 and _monai_ddim(kind, 50).final_alpha_cumprod.item() == 1.0


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
@pytest.mark.parametrize("level,steps,inference_steps", [(200, 10, 50), (950, 19, 20), (60, 60, 1000)])
def test_ddim_denoising_and_encoding_equal_monais_ddim_scheduler(kind, level, steps, inference_steps):
    """Our trajectory L -> 0 on ``sampling_timesteps(L, steps)`` against ``DDIMScheduler(clip_sample=False).step``.

    MONAI's ``step`` goes from timestep k to k - T // N (T = 1000 training steps, N inference steps), so the
    comparison uses grids whose stride L / steps equals T // N (our t is MONAI's k + 1, see above); ours lands on
    any integer grid instead. Its last step (k - T // N = -1) uses ``final_alpha_cumprod = 1``, our alpha_bar[0].
    MONAI's table is float32, so it is given our float64 table: the formulas then agree to 1e-12.
    ``reversed_step`` (k -> k + T // N) is the encoding; it has no step out of clean data (k = -1 would index
    the table's last entry), so the comparison of the encoding starts one stride above 0.
    """
    schedule = NoiseSchedule(kind=kind)
    sched = _monai_ddim(kind, inference_steps, schedule.alpha_bar)
    stride = 1000 // inference_steps
    grid = sampling_timesteps(level, steps)
    assert all(t - s == stride for t, s in zip(grid, grid[1:], strict=False))
    x = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(level), dtype=torch.float64)
    ours, theirs = x.clone(), x.clone()
    for t, s in zip(grid, grid[1:], strict=False):
        ours, x0_ours = ddim_step(schedule, ours, _eps(ours, t), t, s)
        theirs, x0_theirs = sched.step(_eps(theirs, t), t - 1, theirs)
        torch.testing.assert_close(x0_ours, x0_theirs, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    ours, theirs = x.clone(), x.clone()
    for s, t in zip(grid[::-1][1:], grid[::-1][2:], strict=False):
        ours = ddim_reverse_step(schedule, ours, _eps(ours, s), s, t)
        theirs, _ = sched.reversed_step(_eps(theirs, s), s - 1, theirs)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_ddim_step_equals_monais_with_its_own_float32_schedule():
    """Without sharing tables, the float32 rounding of MONAI's schedule is the only difference (5e-7 found)."""
    schedule = NoiseSchedule()
    sched = _monai_ddim("linear", 50)
    x = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in (1000, 500, 20):
        ours, _ = ddim_step(schedule, x, _eps(x, t), t, t - 20)
        theirs, _ = sched.step(_eps(x, t), t - 1, x)
        torch.testing.assert_close(ours, theirs, rtol=5e-6, atol=5e-6)


# -- EMA ---------------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 3, 3)
        self.lin = nn.Linear(4, 2)
        self.register_buffer("scale", torch.ones(3))


def _perturb(net: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            t.add_(torch.randn(t.shape, generator=g, dtype=t.dtype))


def test_ema_equals_torch_averaged_model_and_the_closed_form():
    """Ours starts as a copy of the model and then applies e <- d e + (1 - d) p per update, to parameters and
    floating buffers: ``AveragedModel(get_ema_multi_avg_fn(d), use_buffers=True)`` after a first
    ``update_parameters`` (which copies), and e_n = d^n p_0 + (1 - d) sum_k d^(n-k) p_k. Torch's foreach lerp
    rounds differently from our multiply-add, hence float64 and 1e-12. (Integer buffers, e.g. BatchNorm's batch
    counter, are copied by ours; torch's EMA would try to interpolate them.)"""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    decay = 0.9
    g = torch.Generator().manual_seed(0)
    net = _Net().double()
    ema = EMA(net, decay)
    reference = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    reference.update_parameters(net)
    history = [{k: v.clone() for k, v in net.state_dict().items()}]
    for _ in range(25):
        _perturb(net, g)
        history.append({k: v.clone() for k, v in net.state_dict().items()})
        ema.update(net)
        reference.update_parameters(net)
    n = len(history) - 1
    for key, value in ema.model.state_dict().items():
        torch.testing.assert_close(value, reference.module.state_dict()[key], rtol=1e-12, atol=1e-12)
        closed = decay**n * history[0][key] + sum((1 - decay) * decay ** (n - k) * history[k][key]
                                                  for k in range(1, n + 1))
        torch.testing.assert_close(value, closed, rtol=1e-12, atol=1e-12)
    assert not any(p.requires_grad for p in ema.model.parameters())


# -- GAN losses ----------------------------------------------------------------------------------------
def _lsgan_by_hand(real_outputs, fake_outputs):
    """The least-squares terms as written before MONAI's ``PatchAdversarialLoss`` computed them."""
    from DiffusionAnomalyLib.models.nets.discriminators import _logits

    g = sum(torch.mean((o - 1) ** 2) for o in _logits(fake_outputs))
    d = 0.5 * (sum(torch.mean((o - 1) ** 2) for o in _logits(real_outputs))
               + sum(torch.mean(o**2) for o in _logits(fake_outputs)))
    return g, d


@pytest.mark.parametrize("dims", [3, 2])
def test_gan_losses_equal_the_least_squares_formulas_on_random_logits(dims):
    """Values and gradients equal to rounding, on the outputs of real ``PatchDiscriminator``s (a list of feature
    maps whose last is the logits) and on a multi-scale list (scales summed)."""
    from DiffusionAnomalyLib.models.nets.discriminators import build_discriminators, discriminator_loss, generator_loss

    torch.manual_seed(0)
    disc = build_discriminators(2, channels=8, num_layers=2)[3 - dims]
    real = torch.randn(2, 2, *([16] * dims))
    fake = torch.randn(2, 2, *([16] * dims), requires_grad=True)
    out_real, out_fake = disc(real), disc(fake)
    g_hand, d_hand = _lsgan_by_hand(out_real, out_fake)
    g, d = generator_loss(out_fake), discriminator_loss(out_real, out_fake)
    torch.testing.assert_close(g, g_hand, rtol=1e-6, atol=0)
    torch.testing.assert_close(d, d_hand, rtol=1e-6, atol=0)
    grad = torch.autograd.grad(g, fake, retain_graph=True)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(g_hand, fake)[0], rtol=1e-5, atol=1e-9)
    scales_real = [[torch.randn(2, 1, 5, 5)], [torch.randn(2, 1, 3, 3) * 3]]
    scales_fake = [[torch.randn(2, 1, 5, 5) - 1], [torch.randn(2, 1, 3, 3)]]
    g_hand, d_hand = _lsgan_by_hand(scales_real, scales_fake)
    torch.testing.assert_close(generator_loss(scales_fake), g_hand)
    torch.testing.assert_close(discriminator_loss(scales_real, scales_fake), d_hand)


def test_monais_default_least_squares_would_change_the_loss():
    """MONAI's ``PatchAdversarialLoss(criterion="least_squares")`` applies LeakyReLU(0.05) to the logits unless
    ``no_activation_leastsq=True``: negative logits then count 20 times less, so the default is not our loss."""
    from monai.losses import PatchAdversarialLoss

    logits = torch.tensor([[-2.0, -0.5, 0.3, 1.5]])
    ours = torch.mean(logits**2)
    default = PatchAdversarialLoss(criterion="least_squares")(logits, target_is_real=False, for_discriminator=True)
    plain = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)(
        logits, target_is_real=False, for_discriminator=True)
    assert plain.item() == pytest.approx(ours.item())
    assert default.item() == pytest.approx(torch.mean(torch.where(logits < 0, 0.05 * logits, logits) ** 2).item())
    assert default.item() < 0.5 * ours.item()


@pytest.mark.parametrize("seed", range(6))
def test_otsu_equals_scikit_images_on_maps_and_pooled_histograms(seed):
    """The numpy Otsu (so the median baseline runs on Slicer's own Python, without scikit-image) gives exactly
    scikit-image's threshold, per map and from a pooled histogram."""
    from skimage.filters import threshold_otsu

    from DiffusionAnomalyLib.detection.anomaly import dataset_otsu_threshold, otsu_threshold

    rng = np.random.default_rng(seed)
    healthy = rng.gamma(2.0, 0.04, int(rng.integers(50, 30000)))
    lesion = rng.normal(0.5, 0.1, int(rng.integers(0, 800)))
    values = np.concatenate([healthy, lesion]).astype(np.float32 if seed % 2 else np.float64)
    assert otsu_threshold(values) == float(threshold_otsu(values))
    maps = [values[: len(values) // 2], values[len(values) // 2:]]
    edges = np.linspace(float(values.min()), float(values.max()), 4097)
    hist = sum(np.histogram(v, bins=edges)[0] for v in maps)
    expected = float(threshold_otsu(hist=(hist, (edges[:-1] + edges[1:]) / 2.0)))
    assert dataset_otsu_threshold(maps, [None, None]) == expected


# -- FROC ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_froc_points_and_monais_froc_curve_differ_only_in_their_ends(seed):
    """MONAI's ``compute_froc_curve_data`` (CAMELYON16's code) is our curve without its lowest threshold (where every
    candidate lesion counts, the point our reports show first) and with an appended (0, 0): not a drop-in, so
    ``froc_points`` stays (docs/evaluation.md). At the thresholds both evaluate they agree exactly."""
    from monai.metrics import compute_froc_curve_data

    from DiffusionAnomalyLib.evaluation.metrics import froc_points

    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(12):
        n = int(rng.integers(0, 6))
        hits = rng.random(n) < 0.4
        refs = int(hits.sum() + rng.integers(0, 2))
        cases.append((np.round(rng.random(n) + 0.3 * hits, 2).tolist(), hits.tolist(), refs))
    ours = froc_points(cases)[::-1]  # ascending thresholds, as MONAI's
    scores = np.concatenate([np.asarray(c[0], float) for c in cases])
    hits = np.concatenate([np.asarray(c[1], bool) for c in cases])
    fps, sens = compute_froc_curve_data(scores[~hits], scores[hits], sum(c[2] for c in cases), len(cases))
    assert len(fps) == len(ours)
    np.testing.assert_array_equal(fps[:-1], [f for _, f, _ in ours[1:]])
    np.testing.assert_array_equal(sens[:-1], [s for _, _, s in ours[1:]])
    assert (fps[-1], sens[-1]) == (0, 0) and ours[0][1] > 0


# -- JSON Schema ---------------------------------------------------------------------------------------------
def _bundle_documents() -> list[dict]:
    """The shipped bundles' model.json as they are, a new-format one, and ways to break each part of the schema."""
    import copy
    import json
    from pathlib import Path

    from DiffusionAnomalyLib.detection.presets import get_preset

    models = Path(__file__).resolve().parents[2] / "Resources" / "Models"
    shipped = [json.loads(p.read_text()) for p in sorted(models.glob("*/model.json"))]
    new = {k: v for k, v in copy.deepcopy(shipped[0]).items() if k != "licence"}
    new.update(license="Apache-2.0", organ_preset=json.loads(json.dumps(get_preset("kidney").to_dict())),
               software={"diffusion_anomaly": "0.3.0", "torch": "2.13.0"},
               changelog=[{"version": "1.0", "date": "2026-12-05", "change": "trained"}])
    broken = [
        {"format_version": 2}, {"organ": "lung"}, {"channels": []}, {"channels": [""]}, {"name": 3},
        {"networks": {"denoiser": {}}}, {"unknown_field": 1}, {"files": {"a.safetensors": "short"}},
        {"latent": {"channels": 0}}, {"schedule": {"beta_start": -1}}, {"demo": "yes"},
        {"training_data": 5}, {"software": {"torch": 2}}, {"changelog": [{"version": "1.0", "date": "2026-12-05"}]},
        {"changelog": [{"version": "1.0", "date": "2026-12-05", "change": "x", "who": "me"}]},
        {"organ_preset": {"name": "kidney"}}, {"organ_preset": {**new["organ_preset"], "spacing_mm": [2, 2]}},
        {"recommended": {"sampler": "euler"}}, {"recommended": {"samples": 0}},
    ]
    return shipped + [new] + [{**new, **b} for b in broken] + [{k: v for k, v in new.items() if k != "networks"}]


def test_the_bundle_schema_is_valid_json_schema_and_our_validator_agrees_with_jsonschema():
    """``models/schema.py`` stays hand-written because Slicer's process reads bundles and Slicer's Python has no
    ``jsonschema`` (docs/model-bundles.md); here it must find a problem exactly where ``jsonschema`` does, on the
    shipped bundles, a new-format one and each way of breaking them."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is part of the test extra")
    from DiffusionAnomalyLib.models.schema import model_schema, problems

    schema = model_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    documents = _bundle_documents()
    verdicts = [(bool(problems(d, schema)), any(True for _ in validator.iter_errors(d))) for d in documents]
    assert [ours for ours, _ in verdicts] == [theirs for _, theirs in verdicts]
    assert [ours for ours, _ in verdicts] == [False] * 4 + [True] * (len(documents) - 4)
