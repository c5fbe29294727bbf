"""``dlmbench demo``: the speed-quality frontier and the task view of the shipped checkpoints.

Two parts (``--part frontier|tasks|all``, default all):

*frontier* —
Runs ``configs/demo.yaml`` (MDLM over T, BD3-LM over T′, Eso-LM over α0_eval × T, AR, all on our
small trained checkpoints, timed in full mode), scores the saved samples with the shipped
evaluator (``checkpoints/evaluator-ar``) in a separate stage, draws the frontier and the Gen PPL
vs NFE figures, and prints a table. Re-running resumes: finished cells and scores are reused.

*tasks* — runs ``configs/demo_tasks.yaml``: the prompt-conditioned task checkpoints
(``checkpoints/tasks-*``, ``docs/training-tasks.md``) answer held-out prompts of the built-in task
suite (the validation examples their training never saw) with every family and with the
loglinear/random, confidence and threshold policies over several step counts; prints accuracy
per task against tokens per forward, and writes the AUP leaderboard and the accuracy-vs-TPF
figure (``harness.report.leaderboard``).

The demo never waits on the cost model's calibration: it runs with ``$DLMBENCH_PREDICT=cached``
(:func:`harness.measure.costmodel.prediction_policy`), so ``predicted_s`` is filled only from a
calibration this machine has already cached and is otherwise left empty, which the output says.
``dlmbench demo --predict auto`` calibrates (once per machine; minutes on a busy one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_CONFIG = "configs/demo.yaml"
DEFAULT_TASKS_CONFIG = "configs/demo_tasks.yaml"
DEFAULT_EVALUATOR = "dit:checkpoints/evaluator-ar"


def method_label(row: pd.Series) -> str:
    """A short method name for tables and legends: sampler plus its defining parameter."""
    p = json.loads(row["cell_config"])["params"]
    if row["sampler"] == "esolm":
        return f"esolm α0={p['alpha0_eval']:g}"
    if row["sampler"] == "bd3lm":
        return f"bd3lm L'={p['block_size']}"
    return str(row["sampler"])


def setting_label(row: pd.Series) -> str:
    """The swept setting of a cell (T or T′)."""
    p = json.loads(row["cell_config"])["params"]
    if "steps_per_block" in p:
        return f"T'={p['steps_per_block']}"
    if "num_steps" in p:
        return f"T={p['num_steps']}"
    return "-"


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per ok cell: method, setting, s/sample, NFE, Gen PPL, entropy."""
    ok = df[df["status"] == "ok"].copy()
    ok["method"] = ok.apply(method_label, axis=1)
    ok["setting"] = ok.apply(setting_label, axis=1)
    cols = {
        "method": "method",
        "setting": "setting",
        "s_per_sample": "s/sample",
        "nfe_total": "NFE",
        "gen_ppl": "Gen PPL",
        "entropy_nats": "entropy",
        "trust": "trust",
    }
    have = [c for c in cols if c in ok.columns]
    return ok[have].rename(columns=cols).reset_index(drop=True)


DEFAULT_PREDICT = "cached"
"""The demo's prediction policy: never calibrate, predict only from a cached calibration."""


def run_with_predict_policy(config: str, overrides: tuple[str, ...], predict: str) -> Path:
    """``run_experiment`` under the cost-model policy ``predict`` (cell processes inherit it)."""
    from harness.measure.costmodel import PREDICT_ENV
    from harness.run.sweep import run_experiment

    before = os.environ.get(PREDICT_ENV)
    os.environ[PREDICT_ENV] = predict
    try:
        return run_experiment(config, overrides)
    finally:
        if before is None:
            os.environ.pop(PREDICT_ENV, None)
        else:
            os.environ[PREDICT_ENV] = before


def run_demo(
    config: str = DEFAULT_CONFIG,
    evaluator: str = DEFAULT_EVALUATOR,
    overrides: tuple[str, ...] = (),
    predict: str = DEFAULT_PREDICT,
) -> tuple[Path, pd.DataFrame, list[Path]]:
    """Run, score and plot the demo; returns (run folder, summary table, output paths).

    The outputs: the frontier and Gen PPL vs NFE figures and ``matched.md`` (speed-ups at
    matched quality, :mod:`harness.report.matched`). ``predict`` is the cost-model policy of the
    run (``cached``, ``auto`` or ``off``; see :func:`harness.measure.costmodel.prediction_policy`).
    """
    from harness.quality.stage import score_run
    from harness.report import plots
    from harness.results import load_results

    run_dir = run_with_predict_policy(config, overrides, predict)
    if evaluator == DEFAULT_EVALUATOR and not Path(DEFAULT_EVALUATOR[4:]).is_dir():
        evaluator = "dit:checkpoints/ar"  # a checkout without the evaluator: the AR baseline
        print(f"note: {DEFAULT_EVALUATOR[4:]} not found; scoring with {evaluator} instead")
    score_run(run_dir, evaluator)
    df = load_results(run_dir)
    df["method"] = df.apply(method_label, axis=1)
    out = run_dir / "plots"
    figs: list[Path] = []
    ok = df[(df["status"] == "ok") & df["gen_ppl"].notna()]
    if len(ok):
        figs += plots.plot_frontier(
            ok,
            out / "frontier",
            x="s_per_sample",
            y="gen_ppl",
            by="method",
            title="Speed-quality frontier (CPU, L=128)",
        )
        figs += plots.plot_quality_vs_nfe(ok, out / "gen_ppl_vs_nfe", by="method")
        if ok["sampler"].nunique() > 1:  # speed-ups at matched quality, one front per sampler
            from harness.report.matched import MatchedReportError, write_matched_report

            try:
                figs.append(write_matched_report(run_dir)[0])
            except MatchedReportError as e:  # e.g. every row of a method timed under contention
                print(f"note: no matched-quality report: {e}")
    return run_dir, summary_table(df), figs


def prediction_note(run_dir: Path, predict: str) -> str | None:
    """A line saying why ``predicted_s`` is empty for some cells of the run, or None."""
    from harness.results import load_results

    df = load_results(run_dir)
    ok = df[df["status"] == "ok"]
    if "predicted_s" not in ok.columns or not len(ok):
        return None
    missing = int(ok["predicted_s"].isna().sum())
    if not missing:
        return None
    why = (
        "predictions are off (--predict off)"
        if predict == "off"
        else "no cost-model calibration is cached on this machine and the demo does not "
        "calibrate; `dlmbench demo --predict auto` measures it once per machine"
    )
    return f"note: predicted_s skipped for {missing} of {len(ok)} cells: {why}"


def contention_banner(df: pd.DataFrame) -> str | None:
    """One line when cells were timed under contention (their times are inflated), else None."""
    if "trust_reason" not in df.columns:
        return None
    ok = df[df["status"] == "ok"]
    hit = ok[ok["trust_reason"].fillna("").str.contains("contention")]
    if not len(hit):
        return None
    worst = hit["others_cores"].max() if "others_cores" in hit.columns else math.nan
    return (
        f"WARNING: {len(hit)} of {len(ok)} cells were timed while other processes used our cores "
        f"(up to {worst:.2f} cores): their times are inflated (trust = noisy). Rerun on a quiet "
        "machine; `dlmbench check-machine` shows what is busy."
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def task_label(row: pd.Series) -> str:
    """Sampler, with its policy where it has one (and α0 for Eso-LM)."""
    p = json.loads(row["cell_config"])["params"]
    if row["sampler"] == "esolm":
        return f"esolm α0={p['alpha0_eval']:g}"
    if "policy" in p:
        return f"{row['sampler']} {p.get('schedule', '')}/{p['policy']}".replace(" /", " ")
    return str(row["sampler"])


def task_setting(row: pd.Series) -> str:
    """The swept setting of a task cell: steps, steps per block, or the threshold."""
    p = json.loads(row["cell_config"])["params"]
    if p.get("policy") == "threshold":
        return f"τ={p['policy_threshold']:g}"
    return setting_label(row)


def task_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per method × setting: tokens per forward, accuracy per task and their mean."""
    ok = df[(df["status"] == "ok") & df["task"].notna()].copy()
    if not len(ok):
        return pd.DataFrame()
    ok["method"] = ok.apply(task_label, axis=1)
    ok["setting"] = ok.apply(task_setting, axis=1)
    keys = ["method", "setting"]
    acc = ok.pivot_table(index=keys, columns="task", values="accuracy", aggfunc="mean")
    acc["mean acc"] = acc.mean(axis=1)
    g = ok.groupby(keys)
    acc.insert(0, "TPF", g["tokens_per_forward"].mean())
    acc["tok/s"] = g["gen_tokens_per_s"].median()
    acc["trust"] = g["trust"].agg(lambda t: "noisy" if (t == "noisy").any() else "ok")
    order = {m: i for i, m in enumerate(dict.fromkeys(ok["method"]))}
    acc = acc.reset_index()
    acc = acc.sort_values(
        ["method", "TPF"], key=lambda c: c.map(order) if c.name == "method" else c
    )
    return acc.reset_index(drop=True)


def run_task_demo(
    config: str = DEFAULT_TASKS_CONFIG, overrides: tuple[str, ...] = (), predict: str = "cached"
) -> tuple[Path, pd.DataFrame, list[Path]]:
    """Run the task view; returns (run folder, accuracy table, leaderboard and figure paths)."""
    from harness.report.leaderboard import LeaderboardError, write_leaderboard
    from harness.results import load_results

    run_dir = run_with_predict_policy(config, overrides, predict)
    out: list[Path] = []
    try:
        md, csv, _ = write_leaderboard(run_dir)
        out += [md, csv, run_dir / "plots" / "accuracy_vs_tpf.png"]
    except LeaderboardError as e:
        print(f"note: no leaderboard: {e}")
    return run_dir, task_table(load_results(run_dir)), out


def _print_part(run_dir: Path, table: pd.DataFrame, figs: list[Path], predict: str) -> None:
    print(table.to_string(index=False, formatters={c: _fmt for c in table.columns}))
    note = prediction_note(run_dir, predict)
    if note:
        print(note)
    from harness.results import load_results

    banner = contention_banner(load_results(run_dir))
    if banner:
        print(banner)
    print(f"\nresults: {run_dir}")
    for f in figs:
        print(f"{'report' if f.suffix in ('.md', '.csv') else 'figure'}:  {f}")


def cmd_demo(args: argparse.Namespace) -> int:
    """``dlmbench demo [--part all|frontier|tasks] [--config C] [--tasks-config C]``."""
    overrides = tuple(args.overrides)
    if args.part in ("all", "frontier"):
        print("== speed-quality frontier (unconditional samples, Gen PPL)")
        run_dir, table, figs = run_demo(args.config, args.evaluator, overrides, args.predict)
        _print_part(run_dir, table, figs, args.predict)
    if args.part in ("all", "tasks"):
        print("\n== accuracy under parallelism (prompted tasks; exact match, shuffle: any order)")
        missing = missing_checkpoints(args.tasks_config)
        if missing:
            print(
                f"note: skipped the task view: {', '.join(missing)} not found (train them with "
                "scripts/train_task_checkpoints.sh; docs/training-tasks.md)."
            )
            return 0
        run_dir, table, figs = run_task_demo(args.tasks_config, overrides, args.predict)
        _print_part(run_dir, table, figs, args.predict)
    return 0


def missing_checkpoints(config: str) -> list[str]:
    """Checkpoint directories a config names that do not exist here."""
    from harness.run.experiment import load_yaml

    ck = load_yaml(config).get("checkpoints") or {}
    paths = [v if isinstance(v, str) else (v or {}).get("path", "") for v in ck.values()]
    return [p for p in paths if isinstance(p, str) and ":" not in p and not Path(p).is_dir()]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo``."""
    p = subparsers.add_parser(
        "demo",
        help="speed-quality frontier and accuracy under parallelism of the shipped checkpoints",
    )
    p.add_argument(
        "overrides", nargs="*", help="a.b=value overrides of the demo config(s) of --part"
    )
    p.add_argument(
        "--part",
        choices=["all", "frontier", "tasks"],
        default="all",
        help="frontier (Gen PPL of unconditional samples), tasks (accuracy against tokens per "
        "forward on prompted tasks), or all (default)",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help="the frontier's experiment")
    p.add_argument(
        "--tasks-config", default=DEFAULT_TASKS_CONFIG, help="the task view's experiment"
    )
    p.add_argument(
        "--evaluator",
        default=DEFAULT_EVALUATOR,
        help="Gen PPL evaluator spec (dit:<dir> | hf:<dir> | gguf:<file>)",
    )
    p.add_argument(
        "--predict",
        choices=["cached", "auto", "off"],
        default=DEFAULT_PREDICT,
        help="cost-model predictions: cached (default: only from a cached calibration, never "
        "measuring), auto (calibrate on first use, minutes on a busy machine), off",
    )
    p.set_defaults(fn=cmd_demo)
    return p
