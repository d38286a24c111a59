"""Noise a latent to level L and denoise it back toward "healthy": DDPM, DDIM, DPM-Solver++ and RePaint inpainting.

One entry point, :meth:`LatentSampler.reconstruct`, for a batch of ROI latents (B, C, *spatial):

- ``ddpm``: x_L ~ q(x_L | x_0) (eq. 2.6), then ancestral steps on the grid L -> 0 (eq. 2.8,
  respaced posterior), with guidance.
- ``ddim``: deterministic encoding x_0 -> x_L with reversed DDIM steps (eq. 4.3, unguided), then
  DDIM steps back (eq. 4.2) with guidance. Without guidance and with enough steps this returns the
  input latent.
- ``dpmpp``: the DDIM encoding x_0 -> x_L as ``ddim`` (unguided), then DPM-Solver++(2M) back with guidance
  (dpm_solver.py): second order, so fewer steps for the same denoising error; one network call per step as DDIM.
- ``dpmpp-sde``: x_L ~ q(x_L | x_0) as ``ddpm``, then SDE-DPM-Solver++(2M) with guidance; its first-order step is
  the DDPM step, and it draws the same noise as ``ddpm`` for the same seed.
- ``inpaint``: RePaint: inside ``mask`` the model generates, outside the input is re-noised to the
  current level at every step; each step is repeated ``resample_jumps`` times, diffusing back one
  step in between (liver paper: T = 250, r = 10).

Guidance: classifier guidance (eq. 4.1) with ``guidance`` = s when a classifier is given; for
class-conditional denoisers ``cfg_scale`` applies classifier-free guidance toward healthy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.models.diffusion.ddim import ddim_reverse_step, ddim_step
from DiffusionAnomalyLib.models.diffusion.ddpm import ddpm_step
from DiffusionAnomalyLib.models.diffusion.dpm_solver import Previous, dpmpp_2m_step, sde_dpmpp_2m_step
from DiffusionAnomalyLib.models.diffusion.guidance import HEALTHY, ClassifierGuidance, classifier_free_eps
from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule, sampling_timesteps
from DiffusionAnomalyLib.settings import DETERMINISTIC_SAMPLERS, SAMPLER_DEFAULTS, SAMPLERS, RunSettings

METHODS = SAMPLERS  # one definition: DiffusionAnomalyLib.settings


@dataclass(frozen=True)
class SamplerSettings:
    """The sampler's parameters (in a run: :meth:`from_run` of the resolved ``settings.RunSettings``); the
    defaults are the run defaults of ``settings.SAMPLER_DEFAULTS``. The kidney thesis' optimum for DDPM is
    L = 500, s = 1600 (Table 5.1); the demo bundles recommend their own calibrated values."""

    method: str = SAMPLER_DEFAULTS["sampler"]
    noise_level: int = SAMPLER_DEFAULTS["noise_level"]
    steps: int = SAMPLER_DEFAULTS["steps"]
    guidance: float = SAMPLER_DEFAULTS["guidance"]
    cfg_scale: float = 0.0
    seed: int = 0
    resample_jumps: int = 1
    trajectory_every: int = 0  # keep the predicted x_0 every k steps (0 = never)

    @classmethod
    def from_run(cls, run: RunSettings) -> SamplerSettings:
        """The sampler's part of resolved run settings."""
        return cls(method=run.sampler, noise_level=run.noise_level, steps=run.steps, guidance=run.guidance,
                   seed=run.seed, resample_jumps=run.resample_jumps, trajectory_every=run.trajectory_every)

    def run_fields(self) -> dict[str, Any]:
        """The :class:`~DiffusionAnomalyLib.settings.RunSettings` fields these settings stand for (inverse of
        :meth:`from_run`)."""
        return {"sampler": self.method, "noise_level": self.noise_level, "steps": self.steps,
                "guidance": self.guidance, "seed": self.seed, "resample_jumps": self.resample_jumps,
                "trajectory_every": self.trajectory_every}

    def validate(self, schedule: NoiseSchedule) -> None:
        """The run settings' checks (written once, in ``RunSettings.problems``), then this schedule's range."""
        RunSettings(sampler=self.method, noise_level=self.noise_level, steps=self.steps, guidance=self.guidance,
                    seed=self.seed, resample_jumps=self.resample_jumps, trajectory_every=self.trajectory_every)
        if self.cfg_scale < 0:
            raise InputError(f"classifier-free guidance scale must be >= 0 (got {self.cfg_scale})")
        schedule.check_level(self.noise_level)
        sampling_timesteps(self.noise_level, self.steps)


@dataclass
class SampleResult:
    latent: torch.Tensor
    trajectory: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (t, predicted x_0)
    network_evaluations: int = 0


EpsModel = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def side_by_side(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """``first()`` in this thread (gradients off) and ``second()`` in another, at the same time, each with half of
    PyTorch's intra-op threads: on a few CPU cores two networks side by side keep the cores busier than one after
    the other, each on all of them (the deep, small layers of a 3D U-Net parallelise poorly). Errors of either
    are raised here; the thread count is restored."""
    n = torch.get_num_threads()
    half = max(1, n // 2)
    out: dict[str, Any] = {}

    def work() -> None:
        torch.set_num_threads(half)
        try:
            out["second"] = second()
        except BaseException as exc:  # re-raised in the caller's thread
            out["error"] = exc

    torch.set_num_threads(half)
    worker = threading.Thread(target=work, name="guidance", daemon=True)
    try:
        worker.start()
        with torch.no_grad():
            result = first()
    finally:
        worker.join()
        torch.set_num_threads(n)
    if "error" in out:
        raise out["error"]
    return result, out["second"]


class LatentSampler:
    """Samplers over a noise-prediction network ``eps_model(x, t, labels)``.

    ``classifier(x, t) -> logits`` enables classifier guidance; ``class_conditional`` means the
    denoiser takes labels (healthy = 0, null = 2) and supports classifier-free guidance.
    """

    def __init__(self, eps_model: EpsModel, schedule: NoiseSchedule, classifier=None,
                 class_conditional: bool = False, parallel_guidance: bool = False) -> None:
        self.eps_model = eps_model
        self.schedule = schedule
        self.classifier = classifier
        self.class_conditional = class_conditional
        #: run the classifier's gradient beside the denoiser (both depend on x_t alone), each on half of the
        #: intra-op threads (:func:`side_by_side`); the same operations, so the same results up to float rounding
        self.parallel_guidance = parallel_guidance
        self._nfe = 0

    # -- noise estimates -------------------------------------------------------------------
    def _tvec(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)

    def _eps(self, x: torch.Tensor, t: int, settings: SamplerSettings, guided: bool) -> torch.Tensor:
        tv = self._tvec(x, t)
        if guided and settings.guidance > 0 and self.parallel_guidance and not self.class_conditional:
            guide = ClassifierGuidance(self.classifier, settings.guidance)
            eps, grad = side_by_side(lambda: self.eps_model(x, tv, None), lambda: guide.log_prob_gradient(x, tv))
            self._nfe += 1
            return guide.apply_gradient(eps, grad, x, tv, self.schedule)
        if self.class_conditional:
            scale = settings.cfg_scale if guided else 0.0
            eps = classifier_free_eps(self.eps_model, x, tv, HEALTHY, scale)
            self._nfe += 2 if scale else 1
        else:
            eps = self.eps_model(x, tv, None)
            self._nfe += 1
        if guided and settings.guidance > 0:
            eps = ClassifierGuidance(self.classifier, settings.guidance).apply(eps, x, tv, self.schedule)
        return eps

    # -- entry point -----------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(
        self, z0: torch.Tensor, settings: SamplerSettings, mask: torch.Tensor | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> SampleResult:
        """Reconstruct the latents ``z0`` (B, C, ...) toward healthy. ``mask`` (B, 1, ...) is for inpaint."""
        settings.validate(self.schedule)
        if settings.guidance > 0 and self.classifier is None:
            raise InputError("classifier guidance (guidance > 0) needs a classifier; this model bundle has none")
        if settings.cfg_scale > 0 and not self.class_conditional:
            raise InputError("classifier-free guidance needs a class-conditional denoiser")
        if settings.method == "inpaint" and mask is None:
            raise InputError("the inpaint sampler needs a mask of the region to inpaint")
        self._nfe = 0
        gen = torch.Generator(device=z0.device).manual_seed(int(settings.seed))

        def randn() -> torch.Tensor:
            return torch.randn(z0.shape, generator=gen, device=z0.device, dtype=z0.dtype)

        grid = sampling_timesteps(settings.noise_level, settings.steps)
        pairs = list(zip(grid[:-1], grid[1:], strict=True))  # (t, s), t > s
        total = len(pairs) * (2 if settings.method in DETERMINISTIC_SAMPLERS else settings.resample_jumps if
                              settings.method == "inpaint" else 1)
        done = 0
        trajectory: list[tuple[int, torch.Tensor]] = []

        def tick(step_index: int, t: int, x0: torch.Tensor | None) -> None:
            nonlocal done
            done += 1
            if x0 is not None and settings.trajectory_every and step_index % settings.trajectory_every == 0:
                trajectory.append((t, x0.detach().clone()))
            if progress:
                progress(done, total)

        s_ = self.schedule
        if settings.method in DETERMINISTIC_SAMPLERS:
            x = z0
            for t, s in reversed(pairs):  # encode: s -> t, unguided (eq. 4.3)
                x = ddim_reverse_step(s_, x, self._eps(x, s, settings, guided=False), s, t)
                tick(-1, t, None)
        if settings.method == "ddim":
            for i, (t, s) in enumerate(pairs):
                x, x0 = ddim_step(s_, x, self._eps(x, t, settings, guided=True), t, s)
                tick(i, t, x0)
        elif settings.method in ("dpmpp", "dpmpp-sde"):
            sde = settings.method == "dpmpp-sde"
            if sde:
                x = s_.q_sample(z0, settings.noise_level, randn())
            previous: Previous = None  # (t', x0_hat) of the step before: the multistep history
            for i, (t, s) in enumerate(pairs):
                x0 = s_.predict_x0(x, t, self._eps(x, t, settings, guided=True))
                x = sde_dpmpp_2m_step(s_, x, x0, t, s, randn(), previous) if sde else \
                    dpmpp_2m_step(s_, x, x0, t, s, previous)  # one draw per step, as ddpm: the same noise
                previous = (t, x0)
                tick(i, t, x0)
        elif settings.method == "ddpm":
            x = s_.q_sample(z0, settings.noise_level, randn())
            for i, (t, s) in enumerate(pairs):
                x, x0 = ddpm_step(s_, x, self._eps(x, t, settings, guided=True), t, s, randn())
                tick(i, t, x0)
        else:
            m = mask.to(z0.dtype)
            x = s_.q_sample(z0, settings.noise_level, randn())
            for i, (t, s) in enumerate(pairs):
                for u in range(settings.resample_jumps):
                    unknown, x0 = ddpm_step(s_, x, self._eps(x, t, settings, guided=True), t, s, randn())
                    known = s_.q_sample(z0, s, randn()) if s > 0 else z0
                    x_s = m * unknown + (1 - m) * known
                    if u < settings.resample_jumps - 1:  # diffuse back s -> t and repeat (resampling)
                        ratio = s_.alpha_bar_t(t, x_s) / s_.alpha_bar_t(s, x_s)
                        x = ratio.sqrt() * x_s + (1 - ratio).sqrt() * randn()
                    else:
                        x = x_s
                    tick(i, t, x0 if u == settings.resample_jumps - 1 else None)  # one frame per step
        return SampleResult(x, trajectory, self._nfe)
