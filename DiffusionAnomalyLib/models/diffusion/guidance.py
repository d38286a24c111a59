"""Guidance toward the label "healthy": classifier guidance (kidney thesis eq. 4.1) and classifier-free
guidance for class-conditional denoisers (brain thesis §3.3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule

#: Label indices used throughout: 0 healthy, 1 unhealthy; class-conditional denoisers add a
#: third "null" label (2) that training drops labels to, for classifier-free guidance.
HEALTHY, UNHEALTHY, NULL_LABEL = 0, 1, 2
#: ``torch.profiler.record_function`` labels of the guidance gradient's two halves (``bench --profile``).
PROFILE_FORWARD, PROFILE_BACKWARD = "guidance: classifier forward", "guidance: classifier backward"


@dataclass
class ClassifierGuidance:
    """eps_hat = eps_theta(x_t, t) - s * sqrt(1 - alpha_bar_t) * grad_x log C(y | x_t, t)   (eq. 4.1).

    ``classifier(x, t)`` returns logits (B, n_classes); ``target`` is the label guided toward.
    """

    classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    scale: float
    target: int = HEALTHY

    def log_prob_gradient(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x log C(y = target | x, t), per sample (its forward and backward pass labelled for the profiler)."""
        with torch.enable_grad():
            x_in = x.detach().float().requires_grad_(True)
            with record_function(PROFILE_FORWARD):
                logp = torch.log_softmax(self.classifier(x_in, t).float(), dim=1)[:, self.target]
            with record_function(PROFILE_BACKWARD):
                (grad,) = torch.autograd.grad(logp.sum(), x_in)
        return grad.to(x.dtype)

    def apply(self, eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
        if self.scale == 0:
            return eps
        return self.apply_gradient(eps, self.log_prob_gradient(x, t), x, t, schedule)

    def apply_gradient(self, eps: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                       schedule: NoiseSchedule) -> torch.Tensor:
        """Eq. 4.1 with ``grad`` = :meth:`log_prob_gradient` computed elsewhere (e.g. beside the denoiser)."""
        a = schedule.alpha_bar_t(t, x)
        return eps - self.scale * (1 - a).sqrt() * grad


def classifier_free_eps(
    model: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor, label: int, scale: float
) -> torch.Tensor:
    """(1 + w) eps(x, t, label) - w eps(x, t, null): classifier-free guidance with weight ``scale`` = w."""
    labels = torch.full((x.shape[0],), label, device=x.device, dtype=torch.long)
    cond = model(x, t, labels)
    if scale == 0:
        return cond
    uncond = model(x, t, torch.full_like(labels, NULL_LABEL))
    return (1 + scale) * cond - scale * uncond
