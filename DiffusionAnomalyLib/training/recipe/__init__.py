"""``diffusion-anomaly train all``: from a dataset folder to a calibrated, documented bundle in one command.

``plan`` (the settings and the checks), ``layouts`` (stage 1: the dataset layouts, labels and split), ``estimate``
(time estimates, the dry run), ``stages`` (the stage runner), ``card`` (the model card and summary).
"""

from DiffusionAnomalyLib.training.recipe.plan import TrainAllPlan
from DiffusionAnomalyLib.training.recipe.stages import train_all

__all__ = ["TrainAllPlan", "train_all"]
