"""``dlmbench report matched RUN``: speed-ups at matched quality, from a scored run.

The comparison the papers should have made: for each pair of methods, the time each needs to
reach the same quality (interpolated along its Pareto front, ``report.frontier``), and the
ratio. Needs a run whose samples were scored (``dlmbench quality RUN --evaluator SPEC``, or
``dlmbench demo``). Data flow: rows → one front per method → pairs × quality levels → report.

Written into the run folder (or ``--out``): ``matched.md`` (a summary line per pair, then every
level, then each method's front) and ``matched.csv`` (every level), atomically.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dlmcore.errors import UserError
from harness.report.frontier import (
    FrontierError,
    higher_is_better,
    matched_quality_speedups,
    pareto_front_by,
    require_columns,
)
from harness.results import atomic_write, load_results, markdown_table, resolve_run

DEFAULT_TIME = "s_per_sample"
DEFAULT_QUALITY = "gen_ppl"


class MatchedReportError(UserError, ValueError):
    """The run cannot give a matched-quality report (no quality columns, one method, ...)."""


def method_column(df: pd.DataFrame, by: str) -> pd.Series:
    """The method of each row: ``sampler`` plus the ``p_*`` columns named in ``by`` (comma list).

    ``by="sampler"``: one front per sampler, the hull over every setting of it (Eso-LM's best
    α0_eval × T combination at each quality). ``by="sampler,p_alpha0_eval"``: one per α0_eval.
    """
    cols = [c.strip() for c in by.split(",") if c.strip()]
    require_columns(df, cols, "report matched --by")

    def label(row: pd.Series) -> str:
        extra = [
            f"{c.removeprefix('p_')}={_plain(row[c])}"
            for c in cols
            if c != "sampler" and pd.notna(row[c])
        ]
        base = str(row["sampler"]) if "sampler" in cols else ""
        return (base + (f" ({', '.join(extra)})" if extra else "")).strip() or "all"

    return df.apply(label, axis=1)


def _plain(v: Any) -> str:
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return f"{v:g}" if isinstance(v, float | np.floating) else str(v)


def scored_rows(
    run_dir: Path, time_col: str, quality_col: str, by: str, allow_noisy: bool = False
) -> pd.DataFrame:
    """The run's ok rows that have both columns, with a ``method`` column.

    Rows whose timing is ``noisy`` (``trust``) are left out unless ``allow_noisy``; their count
    is in ``ok.attrs["noisy_left_out"]``.

    Raises:
        MatchedReportError: the quality column is absent or empty (the run was not scored), or
            fewer than two methods have scored rows.
    """
    df = load_results(run_dir)
    if quality_col not in df.columns or df[quality_col].notna().sum() == 0:
        raise MatchedReportError(
            f"run {run_dir.name} has no {quality_col!r} values: score its samples first, e.g. "
            f"`dlmbench quality {run_dir} --evaluator dit:checkpoints/evaluator-ar`."
        )
    require_columns(df, [time_col, "sampler", "status"], "report matched")
    ok = df[(df["status"] == "ok") & df[time_col].notna() & df[quality_col].notna()].copy()
    noisy = ok["trust"].eq("noisy") if "trust" in ok.columns else pd.Series(False, ok.index)
    if not allow_noisy:
        ok = ok[~noisy].copy()
    ok["method"] = method_column(ok, by)
    ok.attrs["noisy_left_out"] = 0 if allow_noisy else int(noisy.sum())
    if ok["method"].nunique() < 2:
        raise MatchedReportError(
            f"run {run_dir.name} has scored rows for {ok['method'].nunique()} method(s) "
            f"({', '.join(sorted(ok['method'].unique()))}); a matched-quality comparison needs two."
        )
    return ok


def summary(
    table: pd.DataFrame, fronts: pd.DataFrame, time_col: str, quality_col: str
) -> pd.DataFrame:
    """One line per pair: the quality range compared, and the ratio's range and geometric mean.

    A pair whose fronts share no quality range gets a ``bound`` instead when one method's
    fastest front point is already better than the other's best: that method reaches the
    other's best quality in at most its fastest time, so time(other) / time(it) ≥ the ratio of
    the other's best-quality time to its fastest time.
    """
    out = []
    for (a, b), g in table.groupby(["method_a", "method_b"], sort=True):
        r = g["ratio_a_over_b"].dropna()
        q = g[quality_col].dropna()
        out.append(
            {
                "method_a": a,
                "method_b": b,
                f"{quality_col}_from": q.max() if len(q) else math.nan,
                f"{quality_col}_to": q.min() if len(q) else math.nan,
                "ratio_min": r.min() if len(r) else math.nan,
                "ratio_max": r.max() if len(r) else math.nan,
                "ratio_geomean": float(np.exp(np.log(r).mean())) if len(r) else math.nan,
                "levels": len(r),
                "bound": "" if len(r) else _dominance_bound(a, b, fronts, time_col, quality_col),
            }
        )
    return pd.DataFrame(out)


def _dominance_bound(a: str, b: str, fronts: pd.DataFrame, time_col: str, quality_col: str) -> str:
    """The one-sided ratio bound of two fronts with disjoint quality ranges ("" if none)."""
    sign = 1.0 if higher_is_better(quality_col) else -1.0  # sign · quality: larger is better

    def ends(m: str) -> tuple[float, float, float, float]:
        f = fronts[fronts["method"] == m]
        fast, best = f.loc[f[time_col].idxmin()], f.loc[(sign * f[quality_col]).idxmax()]
        return fast[time_col], fast[quality_col], best[time_col], best[quality_col]

    (ta_fast, qa_fast, ta_best, qa_best) = ends(a)
    (tb_fast, qb_fast, tb_best, qb_best) = ends(b)
    if sign * qb_fast >= sign * qa_best:  # b's fastest beats a's best
        return (
            f"time {a} / time {b} ≥ {ta_best / tb_fast:.3g}: {b}'s fastest point "
            f"({tb_fast:.3g} s, {quality_col} {qb_fast:.4g}) beats {a}'s best "
            f"({ta_best:.3g} s, {qa_best:.4g})"
        )
    if sign * qa_fast >= sign * qb_best:
        return (
            f"time {b} / time {a} ≥ {tb_best / ta_fast:.3g}: {a}'s fastest point "
            f"({ta_fast:.3g} s, {quality_col} {qa_fast:.4g}) beats {b}'s best "
            f"({tb_best:.3g} s, {qb_best:.4g})"
        )
    return ""


def write_matched_report(
    run: str | Path,
    out: str | Path | None = None,
    *,
    time_col: str = DEFAULT_TIME,
    quality_col: str = DEFAULT_QUALITY,
    by: str = "sampler",
    n_levels: int = 5,
    allow_noisy: bool = False,
) -> tuple[Path, Path, pd.DataFrame]:
    """Write ``matched.md`` / ``matched.csv``; returns their paths and the summary table.

    Raises:
        MatchedReportError: see :func:`scored_rows`.
        FrontierError: a bad column or level count.
    """
    run_dir = resolve_run(str(run))
    rows = scored_rows(run_dir, time_col, quality_col, by, allow_noisy)
    left_out = rows.attrs.get("noisy_left_out", 0)
    noisy_note = (
        f"{left_out} row(s) whose timing is noisy (trust) are left out; `--allow-noisy` keeps "
        "them.\n\n"
        if left_out
        else ""
    )
    table = matched_quality_speedups(rows, "method", time_col, quality_col, n_levels=n_levels)
    fronts = pareto_front_by(rows, time_col, quality_col, by="method")
    summ = summary(table, fronts, time_col, quality_col)
    swept = [c for c in fronts.columns if c.startswith("p_") and fronts[c].nunique() > 1]
    fronts = fronts[list(dict.fromkeys(["method", time_col, quality_col, "nfe_total", *swept]))]
    dest = Path(out) if out else run_dir
    dest.mkdir(parents=True, exist_ok=True)
    md = (
        f"# Speed-ups at matched quality: {run_dir.name}\n\n"
        f"For each pair (a, b): the {time_col} each method's Pareto front needs to reach the "
        f"same {quality_col}, interpolated log-log between adjacent front points at {n_levels} "
        "levels over the quality range both fronts cover; ratio = time a / time b (> 1: b is "
        f"faster). Methods: {by}.\n\n{noisy_note}## Summary\n\n"
        + markdown_table(summ)
        + "\n## Every level\n\n"
        + markdown_table(table)
        + "\n## Pareto fronts\n\n"
        + markdown_table(fronts.reset_index(drop=True))
    )
    p_md = atomic_write(dest / "matched.md", lambda p: p.write_text(md))
    p_csv = atomic_write(dest / "matched.csv", lambda p: table.to_csv(p, index=False))
    return p_md, p_csv, summ


def cmd_matched(args: argparse.Namespace) -> int:
    """``dlmbench report matched RUN [--time COL] [--quality COL] [--by COLS] [--levels N]``."""
    try:
        md, _, _ = write_matched_report(
            args.run,
            args.out,
            time_col=args.time,
            quality_col=args.quality,
            by=args.by,
            n_levels=args.levels,
            allow_noisy=args.allow_noisy,
        )
    except (MatchedReportError, FrontierError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(md.read_text())
    return 0
