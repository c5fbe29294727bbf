"""Speed-quality frontiers and speed-ups at matched quality.

The papers compare samplers at equal NFE or at the longest context; the comparison a user needs is
"how long does each method take to reach the same quality". This module computes it from result
rows (one per cell, ``docs/design.md`` columns):

* :func:`pareto_front`: the non-dominated rows for a cost ``x`` (time) and a quality ``y``.
* :func:`pareto_front_by`: the same per method (the Pareto hull of each sampler).
* :func:`time_at_quality`: the time a front needs to reach a target quality, interpolated
  log-log between adjacent frontier points, NaN outside the measured range.
* :func:`matched_quality_speedups`: for each pair of methods, both times over a grid of common
  quality levels, and their ratio.

Metric directions come from :data:`HIGHER_IS_BETTER` (house-style §5: each metric declares
``higher_is_better``; frontier code reads the flag instead of guessing).

Worked example (Gen PPL, lower is better)::

    method A: (1 s, 100), (2 s, 50), (3 s, 60), (4 s, 25)
    front A:  (1 s, 100), (2 s, 50), (4 s, 25)      (3 s, 60) is dominated by (2 s, 50)
    time_at_quality(A, 70.71) = √2 s                70.71 = √(100·50): halfway in log PPL,
                                                    so halfway in log time between 1 s and 2 s
    time_at_quality(A, 20)    = NaN                 better than any measured point
    time_at_quality(A, 150)   = NaN                 worse than the fastest point: how much faster
                                                    a cheaper setting would be is not measured
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from dlmcore.errors import UserError
from dlmcore.registry import did_you_mean
from harness.quality.metrics import HIGHER_IS_BETTER as QUALITY_HIGHER_IS_BETTER

__all__ = [
    "HIGHER_IS_BETTER",
    "FrontierError",
    "higher_is_better",
    "matched_quality_speedups",
    "pareto_front",
    "pareto_front_by",
    "require_columns",
    "time_at_quality",
]

#: Direction of every metric a frontier may use. Columns with no better direction (``entropy_nats``)
#: are left out on purpose: low entropy flags degenerate samples, but higher is not better.
HIGHER_IS_BETTER: dict[str, bool] = {
    # time and cost: lower is better
    **dict.fromkeys(
        ("wall_s", "wall_s_mean", "s_per_sample", "device_ms", "ms_per_call", "predicted_s"),
        False,
    ),
    **dict.fromkeys(
        ("nfe_total", "nfe_denoise", "token_forwards", "flops_analytic", "bytes_analytic"), False
    ),
    **dict.fromkeys(("peak_alloc_gb", "peak_reserved_gb", "peak_rss_gb", "nvml_used_gb"), False),
    **dict.fromkeys(("energy_j", "j_per_sample", "j_per_token"), False),
    # throughput: higher is better
    **dict.fromkeys(("tokens_per_s", "samples_per_s", "tflops_effective", "mfu"), True),
    # quality: declared by the metrics themselves
    **QUALITY_HIGHER_IS_BETTER,
}


class FrontierError(UserError, ValueError):
    """Bad input to a frontier function (missing columns, unknown metric direction, ...)."""


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better.

    Raises:
        FrontierError: ``metric`` has no declared direction.
    """
    try:
        return HIGHER_IS_BETTER[metric]
    except KeyError:
        hint = did_you_mean(metric, list(HIGHER_IS_BETTER))
        raise FrontierError(
            f"metric {metric!r} has no declared direction.{hint} Pass y_lower_is_better= "
            f"explicitly, or add it to harness.report.frontier.HIGHER_IS_BETTER. Known: "
            f"{', '.join(sorted(HIGHER_IS_BETTER))}."
        ) from None


def require_columns(
    df: pd.DataFrame, columns: Sequence[str], what: str, error: type[Exception] | None = None
) -> None:
    """Raise if ``df`` lacks any of ``columns``, naming the missing ones and what is there.

    Args:
        df: the rows.
        columns: the columns needed.
        what: who needs them (the function name), for the message.
        error: the exception class to raise; :class:`FrontierError` by default.

    Raises:
        FrontierError: (or ``error``) one or more columns are missing, all listed.
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        hints = "".join(did_you_mean(c, list(map(str, df.columns))) for c in missing)
        raise (error or FrontierError)(
            f"{what} needs column(s) {', '.join(map(repr, missing))}, missing from the "
            f"DataFrame.{hints} Present: {', '.join(map(str, df.columns)) or '(none)'}. Pass "
            "result rows with the docs/design.md column names, or name the columns to use."
        )


def usable_rows(
    df: pd.DataFrame, columns: Sequence[str], error: type[Exception] | None = None
) -> pd.DataFrame:
    """Rows with a finite value in every one of ``columns`` (and ``status == 'ok'`` if present).

    Raises:
        FrontierError: (or ``error``) one of ``columns`` does not hold numbers.
    """
    keep = np.ones(len(df), dtype=bool)
    for c in columns:
        if not pd.api.types.is_numeric_dtype(df[c]):
            raise (error or FrontierError)(
                f"column {c!r} holds {df[c].dtype} values, not numbers (first: "
                f"{df[c].iloc[:3].tolist()}). Convert it with pd.to_numeric first."
            )
        keep &= np.isfinite(df[c].to_numpy(dtype=float, na_value=np.nan))
    if "status" in df.columns:
        keep &= (df["status"] == "ok").to_numpy(dtype=bool)
    return df[keep]


def pareto_front(
    df: pd.DataFrame,
    x: str,
    y: str,
    x_lower_is_better: bool = True,
    y_lower_is_better: bool | None = None,
) -> pd.DataFrame:
    """The rows of ``df`` that no other row dominates in (``x``, ``y``).

    A row is dominated when another is at least as good in both columns and strictly better in
    one. Exact duplicates do not dominate each other: all copies are kept. Rows with a missing or
    non-finite ``x`` or ``y``, or a ``status`` other than ``ok``, are ignored.

    Args:
        df: result rows.
        x: the cost column (e.g. ``wall_s``, ``s_per_sample``).
        y: the quality column (e.g. ``gen_ppl``, ``mauve``).
        x_lower_is_better: direction of ``x``.
        y_lower_is_better: direction of ``y``; ``None`` reads it from :data:`HIGHER_IS_BETTER`.

    Returns:
        The front's rows (original index kept), sorted from the best ``x`` to the worst; along
        it ``y`` strictly improves, except between exact duplicates.

    Raises:
        FrontierError: a column is missing, or ``y`` has no declared direction.
    """
    require_columns(df, [x, y], "pareto_front")
    y_lower = (not higher_is_better(y)) if y_lower_is_better is None else y_lower_is_better
    rows = usable_rows(df, [x, y])
    a = rows[x].to_numpy(dtype=float) * (1.0 if x_lower_is_better else -1.0)
    b = rows[y].to_numpy(dtype=float) * (1.0 if y_lower else -1.0)
    order = np.lexsort((b, a))  # by a, then b: minimisation in both
    kept: list[int] = []
    best_b, last = math.inf, (math.nan, math.nan)
    for i in order:
        if b[i] < best_b or (a[i], b[i]) == last:
            kept.append(int(i))
            best_b, last = b[i], (a[i], b[i])
    return rows.iloc[kept]


def pareto_front_by(
    df: pd.DataFrame,
    x: str,
    y: str,
    by: str | Sequence[str] = "sampler",
    x_lower_is_better: bool = True,
    y_lower_is_better: bool | None = None,
) -> pd.DataFrame:
    """:func:`pareto_front` of each group of ``by`` (the Pareto hull of each method), stacked.

    Raises:
        FrontierError: a column is missing, or ``y`` has no declared direction.
    """
    keys = [by] if isinstance(by, str) else list(by)
    require_columns(df, [*keys, x, y], "pareto_front_by")
    fronts = [
        pareto_front(g, x, y, x_lower_is_better, y_lower_is_better)
        for _, g in df.groupby(keys, sort=True, dropna=False)
    ]
    return pd.concat(fronts) if fronts else df.iloc[:0]


def time_at_quality(
    front: pd.DataFrame,
    target_quality: float | Sequence[float] | np.ndarray,
    *,
    x: str = "wall_s",
    y: str = "gen_ppl",
    y_lower_is_better: bool | None = None,
    log: bool = True,
) -> float | np.ndarray:
    """The time the frontier needs to reach ``target_quality``, interpolated along it.

    ``x`` is a cost (lower is better). The front is recomputed from ``front`` (idempotent), so any
    rows may be passed. Between two adjacent frontier points (x₀, q₀), (x₁, q₁) a target q is met
    at ``log x = log x₀ + (log q − log q₀)/(log q₁ − log q₀) · (log x₁ − log x₀)`` (``log=True``:
    time and Gen PPL span orders of magnitude over a step grid and are close to power laws
    between neighbouring points; ``log=False`` interpolates linearly). A target equal to a
    frontier point's quality returns that point's time exactly.

    Outside the front's quality range the answer is NaN: a target better than the best point was
    not reached; a target worse than the fastest point's quality is met by that point, but how
    much faster a cheaper setting would meet it was not measured.

    Args:
        front: result rows (typically one method's).
        target_quality: one quality level or an array of them.
        x: the time column.
        y: the quality column.
        y_lower_is_better: direction of ``y``; ``None`` reads :data:`HIGHER_IS_BETTER`.
        log: interpolate in log-log (default) or linearly.

    Returns:
        A float for a scalar target, else an array of the targets' shape.

    Raises:
        FrontierError: a column is missing, ``y`` has no declared direction, or ``log=True``
            with a non-positive time or quality on the front or in the targets.
    """
    pts = pareto_front(front, x, y, True, y_lower_is_better).drop_duplicates(subset=[x, y])
    xs, qs = pts[x].to_numpy(dtype=float), pts[y].to_numpy(dtype=float)
    targets = np.asarray(target_quality, dtype=float)
    if log:
        _check_positive(xs, x, "frontier times")
        _check_positive(qs, y, "frontier qualities")
        _check_positive(targets[np.isfinite(targets)], y, "target qualities")
    out = _interpolate_front(xs, qs, targets, log)
    return float(out) if out.ndim == 0 else out


def _interpolate_front(
    xs: np.ndarray, qs: np.ndarray, targets: np.ndarray, log: bool
) -> np.ndarray:
    """x at each target on the piecewise curve through (qs, xs); NaN outside [min qs, max qs]."""
    if xs.size == 0:
        return np.full(targets.shape, np.nan)
    order = np.argsort(qs)  # np.interp needs increasing abscissae; q is monotone along the front
    q_sorted, x_sorted = qs[order], xs[order]
    f = np.log if log else (lambda v: v)
    inside = np.isfinite(targets) & (targets >= q_sorted[0]) & (targets <= q_sorted[-1])
    out = np.full(targets.shape, np.nan)
    if q_sorted.size == 1:
        out[inside] = x_sorted[0]
        return out
    vals = np.interp(f(targets[inside]), f(q_sorted), f(x_sorted))
    out[inside] = np.exp(vals) if log else vals
    exact = np.isin(targets, q_sorted)
    out[exact] = x_sorted[np.searchsorted(q_sorted, targets[exact])]
    return out


def _check_positive(values: np.ndarray, column: str, what: str) -> None:
    bad = values[values <= 0]
    if bad.size:
        raise FrontierError(
            f"log-log interpolation needs positive {what}; column {column!r} has "
            f"{bad.tolist()[:5]}. Drop those rows, or pass log=False."
        )


def matched_quality_speedups(
    df: pd.DataFrame,
    method_col: str = "sampler",
    time_col: str = "wall_s",
    quality_col: str = "gen_ppl",
    *,
    levels: Sequence[float] | np.ndarray | None = None,
    n_levels: int = 9,
    y_lower_is_better: bool | None = None,
    log: bool = True,
) -> pd.DataFrame:
    """For each pair of methods, the time each needs to reach the same quality, and the ratio.

    Each method's Pareto front (``time_col`` lower is better) is interpolated with
    :func:`time_at_quality` at common quality levels: by default ``n_levels`` points spaced
    evenly (in log space when ``log``) over the overlap of the two fronts' quality ranges,
    both ends included. A pair whose ranges do not overlap gets one row with NaN quality, times
    and ratio and a ``note`` saying so. Explicit ``levels`` are used as given for every pair
    (NaN where a front does not reach them).

    Args:
        df: result rows holding ``method_col``, ``time_col`` and ``quality_col``.
        method_col: the column naming the method (one front per distinct value).
        time_col: the time column (``wall_s``, ``s_per_sample``, ...).
        quality_col: the quality column (``gen_ppl``, ``mauve``, ...).
        levels: quality levels to compare at, instead of the overlap grid.
        n_levels: size of the overlap grid (≥ 1).
        y_lower_is_better: direction of ``quality_col``; ``None`` reads :data:`HIGHER_IS_BETTER`.
        log: log-log interpolation and a geometric grid (default) or linear.

    Returns:
        One row per (pair, level) with ``method_a`` < ``method_b`` (sorted names),
        ``quality_col``, ``<time_col>_a``, ``<time_col>_b``, ``ratio_a_over_b`` (how many times
        longer method a takes than b; > 1 means b is faster) and ``note``.

    Raises:
        FrontierError: a column is missing, ``n_levels < 1``, or a bad value for log-log.
    """
    require_columns(df, [method_col, time_col, quality_col], "matched_quality_speedups")
    if n_levels < 1:
        raise FrontierError(f"n_levels is {n_levels}; it must be ≥ 1.")
    rows = usable_rows(df, [time_col, quality_col])
    fronts = {
        m: pareto_front(g, time_col, quality_col, True, y_lower_is_better)
        for m, g in rows.groupby(method_col, sort=True)
    }
    out: list[dict] = []
    for a, b in itertools.combinations(sorted(fronts), 2):
        out += _pair_rows(
            a, b, fronts, time_col, quality_col, levels, n_levels, y_lower_is_better, log
        )
    columns = [
        "method_a",
        "method_b",
        quality_col,
        f"{time_col}_a",
        f"{time_col}_b",
        "ratio_a_over_b",
        "note",
    ]
    return pd.DataFrame(out, columns=columns)


def _pair_rows(
    a: str,
    b: str,
    fronts: dict[str, pd.DataFrame],
    time_col: str,
    quality_col: str,
    levels: Sequence[float] | np.ndarray | None,
    n_levels: int,
    y_lower_is_better: bool | None,
    log: bool,
) -> list[dict]:
    qa, qb = fronts[a][quality_col], fronts[b][quality_col]
    lo, hi = max(qa.min(), qb.min()), min(qa.max(), qb.max())
    if levels is None and lo > hi:
        note = (
            f"no common quality range: {a} spans [{qa.min():g}, {qa.max():g}], "
            f"{b} spans [{qb.min():g}, {qb.max():g}]"
        )
        return [_pair_row(a, b, quality_col, time_col, math.nan, math.nan, math.nan, note)]
    if levels is not None:
        grid = np.asarray(levels, dtype=float)
    elif lo == hi:
        grid = np.array([lo])
    else:
        grid = np.geomspace(lo, hi, n_levels) if log else np.linspace(lo, hi, n_levels)
        grid[0], grid[-1] = lo, hi  # exact ends, so they hit frontier points exactly
    kw = dict(x=time_col, y=quality_col, y_lower_is_better=y_lower_is_better, log=log)
    ta = np.atleast_1d(time_at_quality(fronts[a], grid, **kw))
    tb = np.atleast_1d(time_at_quality(fronts[b], grid, **kw))
    return [
        _pair_row(a, b, quality_col, time_col, q, t1, t2, "")
        for q, t1, t2 in zip(grid.tolist(), ta.tolist(), tb.tolist())
    ]


def _pair_row(
    a: str, b: str, quality_col: str, time_col: str, q: float, ta: float, tb: float, note: str
) -> dict:
    ratio = ta / tb if np.isfinite(ta) and np.isfinite(tb) and tb > 0 else math.nan
    return {
        "method_a": a,
        "method_b": b,
        quality_col: q,
        f"{time_col}_a": ta,
        f"{time_col}_b": tb,
        "ratio_a_over_b": ratio,
        "note": note,
    }
