"""DDIM: deterministic denoising (kidney thesis eq. 4.2) and its reverse, the encoding x_s -> x_t (eq. 4.3),
on any grid of timesteps.

Step t -> s (s < t):   x_s = sqrt(ab_s) * x0_hat(x_t) + sqrt(1 - ab_s) * eps(x_t, t)
Step s -> t (s < t):   x_t = sqrt(ab_t) * x0_hat(x_s) + sqrt(1 - ab_t) * eps(x_s, s)
with x0_hat(x_u) = (x_u - sqrt(1 - ab_u) eps) / sqrt(ab_u). For t = s + 1 the second is eq. 4.3
rearranged. When eps does not depend on x (e.g. a constant denoiser) the two are exact inverses.
"""

from __future__ import annotations

import torch

from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule


def ddim_step(schedule: NoiseSchedule, x_t: torch.Tensor, eps: torch.Tensor, t: int, s: int):
    """Deterministic denoising step x_t -> x_s (eq. 4.2 on a strided grid). Returns (x_s, x0_hat)."""
    x0 = schedule.predict_x0(x_t, t, eps)
    a_s = schedule.alpha_bar_t(s, x_t)
    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps, x0


def ddim_reverse_step(schedule: NoiseSchedule, x_s: torch.Tensor, eps: torch.Tensor, s: int, t: int):
    """Deterministic encoding step x_s -> x_t, t > s (eq. 4.3 on a strided grid). Returns x_t."""
    x0 = schedule.predict_x0(x_s, s, eps)
    a_t = schedule.alpha_bar_t(t, x_s)
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
