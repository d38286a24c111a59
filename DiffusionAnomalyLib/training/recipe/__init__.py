"""``diffusion-anomaly train all``: from a dataset folder to a calibrated, documented bundle in one command.

``plan`` (the settings and the checks), ``layouts`` (stage 1: the dataset layouts, labels and split), ``estimate``
(time estimates, the dry run), ``stages`` (the stage runner), ``card`` (the model card and summary).
"""

from __future__ import annotations

from typing import Any

from DiffusionAnomalyLib.training.recipe.plan import STAGES, TrainAllPlan

__all__ = ["STAGES", "TrainAllPlan", "train_all"]


def __getattr__(name: str) -> Any:
    """``train_all`` on first use: the plan (and the command line built from it) needs no torch."""
    if name == "train_all":
        from DiffusionAnomalyLib.training.recipe.stages import train_all

        return train_all
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
