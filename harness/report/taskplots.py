"""Accuracy against tokens per forward: one panel per task × level, one line per method.

The picture behind AUP (``harness.tasks.aup``): each sampler × schedule (× unmasking policy
where the run has one) is a line through its cells' (tokens per forward, accuracy) points,
sorted by tokens per forward, with the accuracy's bootstrap CI as error bars. Rows whose timing
is ``noisy`` (``trust``) are greyed as in :mod:`harness.report.plots` (their accuracy and
tokens per forward are counts, not times, but the row's speed is not to be trusted).

Drawn like every dlmbench figure: on a :class:`~matplotlib.figure.Figure` (Agg for PNG, no
pyplot), the fixed per-sampler palette, ``<prefix>.png`` and ``<prefix>.pdf`` written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.report.frontier import require_columns, usable_rows
from harness.report.plots import (
    PlotError,
    _grey_noisy,
    _keys,
    _paper_style,
    _plain_log_ticks,
    _series,
    save_figure,
)

X = "tokens_per_forward"
Y = "accuracy"
METHOD_COLUMNS = ("sampler", "p_schedule", "p_policy")


def _panels(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per task × level, sorted."""
    level = rows["level"] if "level" in rows.columns else pd.Series(0, rows.index)
    key = pd.to_numeric(level, errors="coerce").fillna(0).astype(int)
    out = []
    for (task, lv), g in rows.assign(_level=key).groupby(["task", "_level"], sort=True):
        out.append((f"{task}, level {lv}", g))
    return out


def _y_error(rows: pd.DataFrame) -> np.ndarray | None:
    """(2, n) error bars from ``accuracy_lo`` / ``accuracy_hi`` (None when absent)."""
    if not {"accuracy_lo", "accuracy_hi"} <= set(rows.columns):
        return None
    y = rows[Y].to_numpy(dtype=float)
    lo = pd.to_numeric(rows["accuracy_lo"], errors="coerce").to_numpy(dtype=float)
    hi = pd.to_numeric(rows["accuracy_hi"], errors="coerce").to_numpy(dtype=float)
    err = np.vstack([y - lo, hi - y])
    return np.clip(np.nan_to_num(err, nan=0.0), 0.0, None)


def accuracy_parallelism_figure(
    df: pd.DataFrame, *, by: str | Sequence[str] | None = None, title: str | None = None
) -> Figure:
    """Accuracy (y) against tokens per forward (x, log), a panel per task × level.

    Args:
        df: task rows: ``task``, ``accuracy``, ``tokens_per_forward`` and the ``by`` columns;
            optional ``level``, ``accuracy_lo`` / ``accuracy_hi``, ``trust``, ``status``.
        by: the columns naming a method (colour follows the first, the sampler); default the
            present ones of sampler, p_schedule, p_policy.
        title: optional figure title.

    Raises:
        PlotError: a column is missing, or no row has both an accuracy and a tokens per forward.
    """
    keys = _keys([c for c in METHOD_COLUMNS if c in df.columns] if by is None else by)
    require_columns(df, [*keys, "task", X, Y], "accuracy_parallelism_figure", error=PlotError)
    rows = usable_rows(df, [X, Y], error=PlotError)
    rows = rows[rows["task"].notna() & (rows[X] > 0)]
    if rows.empty:
        raise PlotError(
            f"accuracy_parallelism_figure: no row has a task, an {Y!r} and a {X!r} > 0."
        )
    panels = _panels(rows)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    with _paper_style():
        fig = Figure(figsize=(4.2 * ncols + 2.8, 3.3 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        legend: dict[str, Any] = {}
        for ax, (name, g) in zip(axes, panels):
            for label, st, ls, m in _series(g, keys):
                m = m.sort_values(X)
                h = ax.errorbar(
                    m[X], m[Y], yerr=_y_error(m), fmt=st.marker, ls=ls, color=st.color, ms=5,
                    lw=1.3, elinewidth=0.8, capsize=2, label=label, zorder=3,
                )  # fmt: skip
                legend.setdefault(label, h)
            _grey_noisy(ax, g, X, Y)
            for h, lab in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(lab, h)
            ax.set_xscale("log")
            ax.set_xlim(g[X].min() / 1.3, g[X].max() * 1.3)
            _plain_log_ticks(ax.xaxis)
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(name)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        fig.supxlabel("Tokens per forward (generated tokens / denoising calls)")
        fig.supylabel("Exact-match accuracy")
        fig.legend(
            list(legend.values()), list(legend.keys()), loc="outside right upper",
            fontsize="small",
        )  # fmt: skip
        if title:
            fig.suptitle(title)
    return fig


def plot_accuracy_vs_tpf(
    df: pd.DataFrame, out_prefix: str | os.PathLike[str], **kwargs: Any
) -> list[Path]:
    """Draw :func:`accuracy_parallelism_figure` and save it; returns the PNG and PDF paths."""
    return save_figure(accuracy_parallelism_figure(df, **kwargs), out_prefix)
