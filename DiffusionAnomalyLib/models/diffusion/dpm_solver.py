"""DPM-Solver++(2M) and its SDE variant: second-order multistep solvers for the reverse process, in data-prediction
(x_0) form, on any decreasing grid of integer timesteps [DPM-Solver++, Lu et al. 2022, arXiv:2211.01095].

Notation as in the paper: alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), lambda_t = log(alpha_t /
sigma_t) (half the log-SNR; +inf at t = 0), and for a step t -> s (s < t) h = lambda_s - lambda_t > 0. D is the data
prediction x0_hat(x_t) = (x_t - sigma_t eps) / alpha_t of the (guided) noise estimate.

Probability-flow ODE, DPM-Solver++(2M) (Algorithm 2):
    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D,
    D   = x0_hat(x_t)                                        on the first step (first order: exactly DDIM),
    D   = (1 + 1/(2r)) x0_hat(x_t) - 1/(2r) x0_hat(x_t')     after it, r = h' / h with h' = lambda_t - lambda_t'
          (t' the grid point before t).
Reverse SDE, SDE-DPM-Solver++(2M) (the SDE variant the DPM-Solver++ authors added to diffusers'
``DPMSolverMultistepScheduler``, ``algorithm_type="sde-dpmsolver++"``, midpoint form):
    x_s = (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) x0_hat(x_t)
          + (alpha_s / 2) (1 - e^{-2h}) (x0_hat(x_t) - x0_hat(x_t')) / r + sigma_s sqrt(1 - e^{-2h}) z,  z ~ N(0, I),
without the third term on the first step; that first-order step is exactly the DDPM posterior step (ddpm.py).

The last step of a grid that ends at t = 0 is first order in both: sigma_0 = 0 makes h infinite, and both updates
become x_0 = x0_hat(x_t) (the last step of DDIM and of DDPM). Everything stays in the tensors' dtype; the
coefficients are computed in float64 from the schedule's table.
"""

from __future__ import annotations

import math

import torch

from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule

#: The multistep history: (t', x0_hat(x_t')) of the grid point before the current one, or None on the first step.
Previous = tuple[int, torch.Tensor] | None


def alpha_sigma_lambda(schedule: NoiseSchedule, t: int) -> tuple[float, float, float]:
    """(alpha_t, sigma_t, lambda_t) at an integer timestep, in float64; at t = 0: (1, 0, +inf)."""
    a_bar = float(schedule.alpha_bar[int(t)])
    alpha, sigma = math.sqrt(a_bar), math.sqrt(max(1.0 - a_bar, 0.0))
    return alpha, sigma, (math.log(alpha / sigma) if sigma > 0 else math.inf)


def _second_order_term(schedule: NoiseSchedule, x0: torch.Tensor, t: int, h: float, previous: Previous):
    """(x0_hat(x_t) - x0_hat(x_t')) / r, the multistep difference of both solvers (None on the first step)."""
    if previous is None:
        return None
    t_prev, x0_prev = previous
    h_prev = alpha_sigma_lambda(schedule, t)[2] - alpha_sigma_lambda(schedule, t_prev)[2]
    return (x0 - x0_prev) * (h / h_prev)


def dpmpp_2m_step(schedule: NoiseSchedule, x_t: torch.Tensor, x0: torch.Tensor, t: int, s: int,
                  previous: Previous = None) -> torch.Tensor:
    """One DPM-Solver++(2M) step x_t -> x_s (s < t) of the probability-flow ODE (Algorithm 2).

    ``x0`` is x0_hat(x_t), shaped like ``x_t`` (B, C, *spatial); ``previous`` = (t', x0_hat(x_t')) of the step before
    (None: the first-order step, which equals ``ddim_step``). Returns x_s; at s = 0 it is ``x0`` (first order).
    """
    _, sigma_t, lambda_t = alpha_sigma_lambda(schedule, t)
    alpha_s, sigma_s, lambda_s = alpha_sigma_lambda(schedule, s)
    if sigma_s == 0:
        return x0
    h = lambda_s - lambda_t
    data = x0
    diff = _second_order_term(schedule, x0, t, h, previous)
    if diff is not None:  # D = (1 + 1/(2r)) x0 - 1/(2r) x0' = x0 + (x0 - x0') / (2r)
        data = x0 + 0.5 * diff
    return (sigma_s / sigma_t) * x_t + (-alpha_s * math.expm1(-h)) * data


def sde_dpmpp_2m_step(schedule: NoiseSchedule, x_t: torch.Tensor, x0: torch.Tensor, t: int, s: int,
                      noise: torch.Tensor, previous: Previous = None) -> torch.Tensor:
    """One SDE-DPM-Solver++(2M) step x_t -> x_s (s < t) of the reverse SDE.

    ``noise`` ~ N(0, I) like ``x_t`` (unused at s = 0); ``previous`` as in :func:`dpmpp_2m_step` (None: the
    first-order step, which equals ``ddpm_step`` with the same noise). Returns x_s; at s = 0 it is ``x0``.
    """
    _, sigma_t, lambda_t = alpha_sigma_lambda(schedule, t)
    alpha_s, sigma_s, lambda_s = alpha_sigma_lambda(schedule, s)
    if sigma_s == 0:
        return x0
    h = lambda_s - lambda_t
    one_minus = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
    out = (sigma_s / sigma_t * math.exp(-h)) * x_t + (alpha_s * one_minus) * x0
    diff = _second_order_term(schedule, x0, t, h, previous)
    if diff is not None:
        out = out + (0.5 * alpha_s * one_minus) * diff
    return out + (sigma_s * math.sqrt(one_minus)) * noise
