"""Accuracy Under Parallelism (AUP), as d3LLM defines it.

Source: Qian et al., *d3LLM: Ultra-Fast Diffusion LLM using Pseudo-Trajectory Distillation*
(arXiv 2601.07568, 2026), reference implementation ``get_aup`` in
https://github.com/hao-ai-lab/d3LLM/blob/main/AUP_leaderboard/aup_utils.py. For one method on
one task, with parallelism ρ (tokens per forward, TPF) and accuracy y in percent:

1. sort the method's points by ρ ascending: (ρ_1, y_1), …, (ρ_n, y_n);
2. keep the points with y_i ≥ y_min = y_1 − 5 (accuracy within 5 points of the least-parallel
   setting);
3. AUP = ρ_1·y_1 + Σ_{i ≥ 2} ½ (ρ_i − ρ_{i−1}) (y_i·W(y_i) + y_{i−1}·W(y_{i−1})) over the kept
   points, with the weight W(y) = min(exp(−α (1 − y / y_max)), 1), α = 3, and y_max the
   highest accuracy of *any* method on the task.

So AUP is the area under the accuracy–parallelism curve (a rectangle from 0 to ρ_1, then
trapezoids), each accuracy discounted exponentially by how far it falls below the best accuracy
on the task. Units: TPF × percentage points.

Two choices here where the reference leaves none or differs (``docs/tasks.md``):

- accuracies are passed as fractions in [0, 1] (dlmbench's columns) and multiplied by 100, so
  the numbers equal d3LLM's;
- the reference *asserts* that the last (most parallel) point is within 5 points of y_1 and
  stops otherwise; here such a point is dropped like any other below y_min (and counted in
  :attr:`AupResult.dropped`). Wherever the reference returns a value, this returns the same.
  Points of equal ρ are ordered by accuracy, highest first (the reference keeps input order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dlmcore.errors import UserError, short_repr

ALPHA = 3.0
"""d3LLM's penalty factor α of the weight W."""

Y_MIN_OFFSET = 5.0
"""d3LLM's accuracy tolerance, in percentage points below y_1."""

PERCENT = 100.0


class AupError(UserError, ValueError):
    """Points that AUP is not defined for (none, non-positive TPF, accuracy outside [0, 1])."""


@dataclass(frozen=True)
class AupResult:
    """AUP of one method on one task, with the points it used.

    Attributes:
        aup: the value (TPF × percentage points).
        used: the (ρ, accuracy fraction) points kept, by ρ ascending.
        dropped: how many points fell below y_min and were left out.
        y_max: the task's best accuracy (fraction) the weight was relative to.
        index: the input position of each used point (same order as ``used``).
    """

    aup: float
    used: tuple[tuple[float, float], ...]
    dropped: int
    y_max: float
    index: tuple[int, ...]


def weight(y: float, y_max: float, alpha: float = ALPHA) -> float:
    """W(y) = min(exp(−α (1 − y / y_max)), 1); 1 when y_max is 0 (every accuracy is then 0)."""
    if y_max <= 0:
        return 1.0
    return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0)


def _check(tpf: Sequence[float], accuracy: Sequence[float], y_max: float) -> None:
    if len(tpf) != len(accuracy):
        raise AupError(f"AUP needs one accuracy per TPF; got {len(tpf)} and {len(accuracy)}.")
    if not len(tpf):
        raise AupError("AUP needs at least one (tokens per forward, accuracy) point; got none.")
    bad_rho = [r for r in tpf if not (math.isfinite(r) and r > 0)]
    if bad_rho:
        raise AupError(
            f"tokens per forward must be finite and > 0; got {short_repr(bad_rho)}. Leave out "
            "rows without a measured parallelism."
        )
    bad_y = [y for y in [*accuracy, y_max] if not (math.isfinite(y) and 0.0 <= y <= 1.0)]
    if bad_y:
        raise AupError(
            f"accuracies must be fractions in [0, 1] (not percent); got {short_repr(bad_y)}."
        )


def aup_points(
    tpf: Sequence[float],
    accuracy: Sequence[float],
    y_max: float,
    *,
    alpha: float = ALPHA,
    y_min_offset: float = Y_MIN_OFFSET,
) -> AupResult:
    """AUP of one method's (tokens per forward, accuracy) points on one task.

    Args:
        tpf: parallelism ρ of each point (generated tokens per denoising call), > 0.
        accuracy: accuracy of each point, a fraction in [0, 1].
        y_max: the best accuracy of any method on this task (fraction); the weight's reference.
        alpha: W's penalty factor (d3LLM: 3).
        y_min_offset: accuracy tolerance below y_1, in percentage points (d3LLM: 5).

    Raises:
        AupError: no points, unequal lengths, ρ ≤ 0, or an accuracy outside [0, 1].
    """
    tpf = [float(r) for r in tpf]
    accuracy = [float(y) for y in accuracy]
    _check(tpf, accuracy, float(y_max))
    order = sorted(range(len(tpf)), key=lambda i: (tpf[i], -accuracy[i]))
    y_min = PERCENT * accuracy[order[0]] - y_min_offset
    index = [i for i in order if PERCENT * accuracy[i] >= y_min]
    kept = [(tpf[i], accuracy[i]) for i in index]
    y_top = PERCENT * float(y_max)

    def wy(y: float) -> float:
        return PERCENT * y * weight(PERCENT * y, y_top, alpha)

    area = kept[0][0] * PERCENT * kept[0][1]
    for (r0, y0), (r1, y1) in zip(kept, kept[1:]):
        area += 0.5 * (r1 - r0) * (wy(y1) + wy(y0))
    return AupResult(area, tuple(kept), len(tpf) - len(kept), float(y_max), tuple(index))


def aup(
    tpf: Sequence[float],
    accuracy: Sequence[float],
    y_max: float,
    *,
    alpha: float = ALPHA,
    y_min_offset: float = Y_MIN_OFFSET,
) -> float:
    """The AUP value of :func:`aup_points` (same arguments)."""
    return aup_points(tpf, accuracy, y_max, alpha=alpha, y_min_offset=y_min_offset).aup
