"""Progress of one detection: its stages, the share of the whole each takes, and the overall fraction. One
definition for every front end (the worker's ``progress`` events, the command line's bar, the panel)."""

from __future__ import annotations

from collections.abc import Callable

#: Share of the whole run each stage takes, in order (reconstruction dominates).
STAGE_WEIGHTS = {"extract": 0.05, "reconstruct": 0.8, "compose": 0.05, "postprocess": 0.05, "write": 0.05}
#: ``progress(stage, step, total)``: a stage's progress, as every layer reports it.
Progress = Callable[[str, int, int], None]


def overall(stage: str, step: int, total: int) -> float:
    """The fraction of the whole run done at ``step`` of ``total`` in ``stage`` (0..1); a synthesis has one stage,
    ``synthesize``.

    >>> overall("reconstruct", 5, 10)
    0.45
    """
    if stage == "synthesize":  # ``synthesize``: one stage, the whole job
        return round(min(1.0, step / max(total, 1)), 6)
    order = list(STAGE_WEIGHTS)
    start = sum(STAGE_WEIGHTS[s] for s in order[: order.index(stage)])
    return round(min(1.0, start + STAGE_WEIGHTS[stage] * (step / max(total, 1))), 6)
