"""``dlmbench report leaderboard RUN``: samplers ranked by Accuracy Under Parallelism (AUP).

Reads a run's task rows (one per cell: a sampler setting answering one task × level; columns
``sampler``, ``p_schedule``, ``p_policy``, ``task``, ``level``, ``accuracy``, ``accuracy_lo``,
``accuracy_hi``, ``n_examples``, ``tokens_per_forward``, ``gen_tokens_per_s``, ``trust``).
Data flow:

1. rows → methods: sampler × schedule × policy (a missing schedule or policy is "–"); the
   method's cells differ in the other parameters (steps, thresholds, …), which move it along
   its accuracy–parallelism curve;
2. per method × task × level: AUP over the cells' (tokens per forward, accuracy) points
   (:mod:`harness.tasks.aup`), y_max = the best accuracy of any method on that task × level;
3. per method: the mean AUP over every task × level of the run, one the method lacks counting
   0 (d3LLM's leaderboard divides by its fixed number of tasks the same way); ranked by it.

Speed beside it: ``tok_s`` is the generated tokens per second of the method's most parallel
point that AUP kept (its fastest setting still within 5 points of accuracy), averaged over the
task × levels. AUP itself counts tokens per network call, not seconds, so a ``noisy`` timing
(``trust``) leaves it unchanged; noisy rows are marked in the speed columns.

Written into the run folder (or ``--out``), atomically: ``leaderboard.md`` (the ranking, then
every method × task × level), ``leaderboard.csv`` (the ranking, with one AUP column per task ×
level), and ``plots/accuracy_vs_tpf.png`` / ``.pdf`` (:mod:`harness.report.taskplots`).
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
from harness.results import atomic_write, load_results, markdown_table, resolve_run
from harness.tasks.aup import ALPHA, Y_MIN_OFFSET, AupError, aup_points

METHOD_COLUMNS = ("sampler", "p_schedule", "p_policy")
"""The columns that name a method; absent ones are treated as "–"."""

REQUIRED_COLUMNS = ("sampler", "task", "accuracy", "tokens_per_forward")
NONE = "–"
PLOT_NAME = "accuracy_vs_tpf"


class LeaderboardError(UserError, ValueError):
    """The run cannot give a leaderboard (no task rows, a missing column)."""


# --------------------------------------------------------------------------------------------
# 1. rows → methods
# --------------------------------------------------------------------------------------------


def _text(v: Any) -> str:
    if v is None or (isinstance(v, float | np.floating) and math.isnan(v)):
        return NONE
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v)


def task_rows(df: pd.DataFrame, run_name: str = "run") -> pd.DataFrame:
    """The ok rows with a task, an accuracy and a positive tokens per forward.

    Adds ``schedule``, ``policy`` (text, "–" when absent), ``level_key`` (int, 0 when absent),
    ``method`` (``sampler · schedule · policy``) and ``noisy`` (bool).

    Raises:
        LeaderboardError: a required column is missing, or no row qualifies.
    """
    if "task" not in df.columns or df["task"].notna().sum() == 0:
        raise LeaderboardError(
            f"run {run_name} has no task rows (no 'task' values): a leaderboard ranks samplers "
            "on prompted tasks; run an experiment with a `tasks:` section first (docs/tasks.md)."
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise LeaderboardError(
            f"run {run_name} has task rows but no {', '.join(map(repr, missing))} column(s); "
            "they are written by task cells (docs/tasks.md, Result columns). Re-run its cells."
        )
    ok = df["status"].eq("ok") if "status" in df.columns else pd.Series(True, df.index)
    acc = pd.to_numeric(df["accuracy"], errors="coerce")
    tpf = pd.to_numeric(df["tokens_per_forward"], errors="coerce")
    keep = ok & df["task"].notna() & acc.between(0.0, 1.0) & (tpf > 0) & np.isfinite(tpf)
    rows = df[keep].copy()
    if rows.empty:
        raise LeaderboardError(
            f"run {run_name} has no finished task row with an accuracy in [0, 1] and a "
            "tokens_per_forward > 0; `dlmbench show` lists its cells and their errors."
        )
    rows["accuracy"] = acc[keep].astype(float)
    rows["tokens_per_forward"] = tpf[keep].astype(float)
    rows["task"] = rows["task"].astype(str)
    for col, name in (("p_schedule", "schedule"), ("p_policy", "policy")):
        rows[name] = rows[col].map(_text) if col in rows.columns else NONE
    level = rows["level"] if "level" in rows.columns else pd.Series(0, rows.index)
    rows["level_key"] = pd.to_numeric(level, errors="coerce").fillna(0).astype(int)
    rows["method"] = rows["sampler"].astype(str) + " · " + rows["schedule"] + " · " + rows["policy"]
    rows["noisy"] = rows["trust"].eq("noisy") if "trust" in rows.columns else False
    return rows


# --------------------------------------------------------------------------------------------
# 2. AUP per method × task × level
# --------------------------------------------------------------------------------------------


def _value(row: pd.Series, col: str) -> float:
    v = row.get(col, math.nan)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def method_task_table(
    rows: pd.DataFrame, alpha: float = ALPHA, y_min_offset: float = Y_MIN_OFFSET
) -> pd.DataFrame:
    """One line per method × task × level: AUP and what it rests on.

    Columns: method, sampler, schedule, policy, task, level, aup, points (kept / all), dropped,
    y_max, acc_first (accuracy of the least parallel point) with acc_first_lo / _hi (its CI),
    tpf_max and tok_s (tokens per forward and generated tokens/s of the most parallel kept
    point), tok_s_noisy (that point's timing is noisy), noisy (noisy rows of the group).
    """
    y_max = rows.groupby(["task", "level_key"])["accuracy"].max()
    out = []
    keys = ["method", "task", "level_key"]
    for (method, task, level), g in rows.groupby(keys, sort=True):
        res = aup_points(
            g["tokens_per_forward"].tolist(),
            g["accuracy"].tolist(),
            float(y_max[(task, level)]),
            alpha=alpha,
            y_min_offset=y_min_offset,
        )
        first = g.iloc[res.index[0]]  # the least parallel point (always kept)
        fast = g.iloc[res.index[-1]]  # the most parallel kept point
        last_tpf = res.used[-1][0]
        out.append(
            {
                "method": method, "sampler": first["sampler"], "schedule": first["schedule"],
                "policy": first["policy"], "task": task, "level": int(level), "aup": res.aup,
                "points": f"{len(res.used)}/{len(g)}", "dropped": res.dropped,
                "y_max": res.y_max, "acc_first": float(first["accuracy"]),
                "acc_first_lo": _value(first, "accuracy_lo"),
                "acc_first_hi": _value(first, "accuracy_hi"),
                "tpf_max": last_tpf, "tok_s": _value(fast, "gen_tokens_per_s"),
                "tok_s_noisy": bool(fast["noisy"]), "noisy": int(g["noisy"].sum()),
            }
        )  # fmt: skip
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------
# 3. the ranking
# --------------------------------------------------------------------------------------------


def task_label(task: str, level: int) -> str:
    """``add L2``."""
    return f"{task} L{level}"


def ranking(per_task: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """One line per method, best mean AUP first, with one ``aup <task> L<level>`` column each.

    ``aup``: mean over every task × level of the run (a missing one counts 0); ``tasks``:
    how many the method has; ``acc_first``, ``tpf_max``, ``tok_s``: means over them;
    ``noisy``: noisy rows / all rows of the method.
    """
    per_task = per_task.assign(
        label=[task_label(t, lv) for t, lv in zip(per_task.task, per_task.level)]
    )
    labels = sorted(per_task["label"].unique())
    wide = per_task.pivot(index="method", columns="label", values="aup").reindex(columns=labels)
    out = []
    for method, g in per_task.groupby("method", sort=True):
        mine = rows[rows["method"] == method]
        first = g.iloc[0]
        out.append(
            {
                "method": method, "sampler": first["sampler"], "schedule": first["schedule"],
                "policy": first["policy"], "aup": float(wide.loc[method].fillna(0.0).mean()),
                "tasks": f"{len(g)}/{len(labels)}", "acc_first": g["acc_first"].mean(),
                "tpf_max": g["tpf_max"].mean(), "tok_s": g["tok_s"].mean(),
                "tok_s_noisy": bool(g["tok_s_noisy"].any()),
                "noisy": f"{int(mine['noisy'].sum())}/{len(mine)}",
                **{f"aup {lab}": wide.loc[method, lab] for lab in labels},
            }
        )  # fmt: skip
    table = pd.DataFrame(out).sort_values(["aup", "method"], ascending=[False, True])
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def _speed_text(table: pd.DataFrame) -> pd.DataFrame:
    """A display copy: tok/s to 3 significant figures, marked where its timing is noisy."""
    shown = table.copy()
    shown["tok_s"] = [
        ("–" if math.isnan(v) else f"{v:.3g}") + (" (noisy)" if nz else "")
        for v, nz in zip(table["tok_s"], table["tok_s_noisy"])
    ]
    return shown


def write_leaderboard(
    run: str | Path,
    out: str | Path | None = None,
    *,
    alpha: float = ALPHA,
    y_min_offset: float = Y_MIN_OFFSET,
    plot: bool = True,
) -> tuple[Path, Path, pd.DataFrame]:
    """Write ``leaderboard.md`` / ``.csv`` (and the figure); return their paths and the ranking.

    Raises:
        LeaderboardError: see :func:`task_rows`.
        AupError: rows AUP is not defined for.
    """
    run_dir = resolve_run(str(run))
    rows = task_rows(load_results(run_dir), run_dir.name)
    per_task = method_task_table(rows, alpha, y_min_offset)
    table = ranking(per_task, rows)
    order = {m: i for i, m in enumerate(table["method"])}
    per_task = per_task.sort_values(["task", "level"]).sort_values(
        "method", key=lambda s: s.map(order), kind="stable"
    )
    dest = Path(out) if out else run_dir
    dest.mkdir(parents=True, exist_ok=True)
    figure = ""
    if plot:
        from harness.report.taskplots import plot_accuracy_vs_tpf

        plot_accuracy_vs_tpf(rows, dest / "plots" / PLOT_NAME)
        figure = f"![accuracy vs tokens per forward](plots/{PLOT_NAME}.png)\n\n"
    rank_cols = [
        "rank", "sampler", "schedule", "policy", "aup", "tasks", "acc_first", "tpf_max", "tok_s",
        "noisy",
    ]  # fmt: skip
    task_cols = [
        "sampler", "schedule", "policy", "task", "level", "aup", "points", "y_max", "acc_first",
        "acc_first_lo", "acc_first_hi", "tpf_max", "tok_s", "noisy",
    ]  # fmt: skip
    md = (
        f"# Leaderboard: {run_dir.name}\n\n"
        f"AUP (Accuracy Under Parallelism, d3LLM, arXiv 2601.07568): per method and task × "
        f"level, the points (ρ = tokens per forward, y = accuracy %) sorted by ρ, those with "
        f"y ≥ y_1 − {y_min_offset:g} kept, AUP = ρ_1·y_1 + Σ ½(ρ_i − ρ_(i−1))(y_i·W(y_i) + "
        f"y_(i−1)·W(y_(i−1))), W(y) = min(exp(−{alpha:g}(1 − y/y_max)), 1), y_max = the best "
        "accuracy of any method on the task × level. A method's AUP is its mean over every "
        "task × level of the run (a missing one counts 0). tok_s: generated tokens/s at the "
        "method's most parallel kept point; a noisy timing (trust) is marked and changes no "
        "AUP (ρ is a count). docs/tasks.md has the details.\n\n"
        + figure
        + "## Ranking\n\n"
        + markdown_table(_speed_text(table), rank_cols)
        + "\n## Every task × level\n\n"
        + markdown_table(_speed_text(per_task), task_cols)
    )
    p_md = atomic_write(dest / "leaderboard.md", lambda p: p.write_text(md))
    csv = table.drop(columns=["method"])
    p_csv = atomic_write(dest / "leaderboard.csv", lambda p: csv.to_csv(p, index=False))
    return p_md, p_csv, table


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """``dlmbench report leaderboard RUN [--out DIR] [--alpha A] [--y-min-offset P]``."""
    try:
        md, _, _ = write_leaderboard(
            args.run,
            args.out,
            alpha=args.alpha,
            y_min_offset=args.y_min_offset,
            plot=not args.no_plot,
        )
    except (LeaderboardError, AupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(md.read_text())
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The leaderboard's options on the ``report`` parser."""
    g = parser.add_argument_group("leaderboard")
    g.add_argument(
        "--alpha", type=float, default=ALPHA, help=f"AUP's penalty factor α (d3LLM: {ALPHA:g})"
    )
    g.add_argument(
        "--y-min-offset",
        type=float,
        default=Y_MIN_OFFSET,
        help=f"AUP keeps points within this many accuracy points of y_1 (d3LLM: {Y_MIN_OFFSET:g})",
    )
    g.add_argument("--no-plot", action="store_true", help="skip the accuracy-vs-TPF figure")
