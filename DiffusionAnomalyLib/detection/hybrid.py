"""The hybrid anomaly map: the model's map and the median baseline's, combined in one documented way.

    h = max(m, W * b)

``m`` is the model's anomaly map, ``b`` the non-neural median baseline's (:class:`~.baseline.MedianBaseline` on
the organ's own preset, as ``diffusion-anomaly baseline`` makes it, with that preset's median filter:
:func:`~.pipeline.baseline_map`), ``W >= 0``
the weight (``--hybrid``; 0: the model's map alone). Both maps are |x - x_hat| in network units, so ``W`` says how
much a baseline residual counts against a model residual. Thresholded at the model's threshold ``t``, a voxel is
abnormal where the model's map exceeds ``t`` or the baseline's exceeds ``t / W``: where either method calls it
abnormal at its own threshold. The calibration (``sweep``/``train all --hybrid-scales C ...``) tries
``W = t / (C * the baseline's global Otsu threshold on the validation cases)`` for each ``C`` and keeps W = 0 unless
a hybrid point is better on the validation split (docs/evaluation.md#the-hybrid-map).
"""

from __future__ import annotations

import numpy as np

#: What ``run.json`` and the cards call the combination.
FORMULA = "max(model, W x median baseline)"


def hybrid_map(model: np.ndarray, baseline: np.ndarray | None, weight: float) -> np.ndarray:
    """``max(model, weight * baseline)`` (float32); ``model`` itself when ``weight`` is 0."""
    if not weight:
        return model
    if baseline is None:
        raise ValueError("a hybrid weight > 0 needs the baseline's map")
    return np.maximum(model, np.float32(weight) * baseline).astype(np.float32, copy=False)


def hybrid_weight(threshold: float, baseline_threshold: float, scale: float) -> float:
    """The weight at which the hybrid map, thresholded at ``threshold``, calls a voxel abnormal where the baseline's
    map exceeds ``scale`` x ``baseline_threshold``: ``threshold / (scale * baseline_threshold)`` (6 digits)."""
    if not (baseline_threshold > 0 and scale > 0 and threshold > 0):
        raise ValueError(f"hybrid weight needs positive thresholds (got {threshold}, {baseline_threshold}, {scale})")
    return float(f"{threshold / (scale * baseline_threshold):.6g}")

