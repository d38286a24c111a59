"""Network precision: float32, or bfloat16 autocast where the hardware runs bfloat16 natively.

``precision`` (a run setting, ``--precision``) is ``auto``, ``fp32`` or ``bf16``. ``auto`` takes the fast path
where it is faster and numerically safe: bfloat16 autocast on CUDA GPUs that support it and on CPUs with AMX-BF16
(oneDNN then runs convolutions and matrix products on the AMX tiles), float32 elsewhere. AVX-512 BF16 alone is not
enough: on a 2-core Xeon with AVX-512 BF16 but no AMX, bfloat16 convolutions ran slower than float32 ones
(docs/performance.md). Only the networks (denoiser forward, classifier forward and its input gradient)
run in autocast; their outputs are cast back to float32, so the sampler arithmetic stays float32.
``fp32`` turns the fast path off.

On the CPU the bfloat16 path also runs the denoiser in the ``channels_last_3d`` memory format
(:func:`network_layout`): oneDNN then computes its bfloat16 convolutions without reordering every activation,
which nearly halves their time again on this project's CPU (docs/performance.md). The classifier's gradient
(a backward pass) was slower in that layout and keeps the default one. float32 keeps the default
layout, so ``fp32`` results stay exactly those of earlier versions. ``torch.compile`` is not used.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.settings import PRECISIONS

#: CPU flag (``/proc/cpuinfo``) under which ``auto`` runs the networks in bfloat16: AMX-BF16 tiles. (AVX-512 BF16's
#: dot products alone measured slower than float32 in oneDNN's 3D convolutions: docs/performance.md.)
CPU_FAST_BF16_FLAG = "amx_bf16"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_fast_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether bfloat16 is faster than float32 on this CPU: AMX-BF16 and PyTorch's oneDNN built in. Without AMX,
    bfloat16 is emulated (slower) or runs on AVX-512 BF16 (measured slower than float32 too)."""
    flags = cpu_flags() if flags is None else flags
    return torch.backends.mkldnn.is_available() and CPU_FAST_BF16_FLAG in flags


def cuda_bf16(device: torch.device) -> bool:
    """Whether the CUDA device computes in bfloat16 natively (compute capability 8.0+: Ampere and later)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_precision(requested: str, device: torch.device, *, cpu_bf16: bool | None = None,
                      gpu_bf16: bool | None = None) -> str:
    """``fp32`` or ``bf16`` for the networks on ``device``: ``auto`` is bf16 where native (see the module doc),
    else fp32; ``bf16`` asked for explicitly runs on any CPU or CUDA device (emulated where not native).
    ``cpu_bf16`` / ``gpu_bf16`` override the hardware probes (tests)."""
    if requested not in PRECISIONS:
        raise InputError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return "fp32"
    if device.type not in ("cpu", "cuda"):
        if requested == "bf16":
            raise InputError(f"--precision bf16 runs on CPU and CUDA devices only, not on {device.type}; use "
                             "--precision fp32 or auto")
        return "fp32"
    if requested == "bf16":
        return "bf16"
    if device.type == "cuda":
        return "bf16" if (cuda_bf16(device) if gpu_bf16 is None else gpu_bf16) else "fp32"
    return "bf16" if (cpu_fast_bf16() if cpu_bf16 is None else cpu_bf16) else "fp32"


def channels_last(device: torch.device, precision: str) -> bool:
    """Whether the networks run in ``channels_last_3d`` at this resolved precision: bfloat16 on the CPU."""
    return device.type == "cpu" and precision == "bf16"


def parallel_guidance(device: torch.device, precision: str) -> bool:
    """Whether the sampler runs the classifier's gradient beside the denoiser (``LatentSampler.parallel_guidance``):
    on the CPU's fast path with at least two intra-op threads. ``fp32`` keeps the one-after-the-other order (and
    the thread count) of earlier versions; on a GPU the two would share one stream, so nothing is gained."""
    return device.type == "cpu" and precision == "bf16" and torch.get_num_threads() >= 2


def network_layout(module, device: torch.device, precision: str):
    """``module`` (in place) in the memory format its precision runs fastest in: ``channels_last_3d`` for bfloat16
    on the CPU, else the default; the values are unchanged. None passes through."""
    if module is None:
        return None
    fmt = torch.channels_last_3d if channels_last(device, precision) else torch.contiguous_format
    for m in module.modules():
        if isinstance(m, torch.nn.Conv3d):
            m.to(memory_format=fmt)
    return module


def _layout_input(x: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    if x.dim() == 5 and channels_last(device, precision):
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def network_autocast(device: torch.device, precision: str):
    """The autocast context for the networks at a resolved ``precision`` (a no-op for fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def eps_in_precision(eps: Callable, device: torch.device, precision: str) -> Callable:
    """The noise predictor ``eps(x, t, labels)`` evaluated at ``precision``, returned as float32."""
    if precision != "bf16":
        return eps

    def wrapped(x, t, labels=None):
        with network_autocast(device, precision):
            out = eps(_layout_input(x, device, precision), t, labels)
        return out.float().contiguous()

    return wrapped


class ClassifierInPrecision:
    """A classifier ``(x, t) -> logits`` evaluated at ``precision`` with float32 logits; gradients flow through
    (autocast records the bfloat16 casts, and the gradient with respect to a float32 input is float32)."""

    def __init__(self, classifier: Callable, device: torch.device, precision: str) -> None:
        self.classifier, self.device, self.precision = classifier, device, precision

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with network_autocast(self.device, self.precision):
            return self.classifier(x, t).float()


def classifier_in_precision(classifier, device: torch.device, precision: str):
    """``classifier`` at ``precision`` (unchanged for fp32 or None)."""
    if classifier is None or precision != "bf16":
        return classifier
    return ClassifierInPrecision(classifier, device, precision)
