"""Validate the CPU cost model on shapes it was not calibrated on; write a Markdown table.

    python scripts/costmodel_heldout.py [--config configs/costmodel_heldout.yaml]
        [--sizes cpu-s,cpu-m] [--out docs/results/costmodel_heldout.md]

The cost model's calibration (``harness.measure.costmodel``) measures op times on a power-of-two
grid and the per-call residual at 1, 2, 4, 16, 64 and 512 fed tokens: the very shapes the CPU
Table 11 cells feed, so agreement there says little about other shapes. This script runs
``configs/costmodel_heldout.yaml`` (full forwards at L = 96 / 192 / 384, BD3-LM blocks of L′ = 8
and 32, Eso-LM steps and AR at those L) for each model size in ``--sizes`` (the config's model
first; other sizes replace its ``random:<size>`` path and keep the middle L only), then lists per
cell the measured median wall time of one execute, the cost model's ``predicted_s`` (computed
by the runner from the calls the cell made, before and independently of any timing) and the error
``measured / predicted − 1``. Resumes: finished cells are reused from ``results/``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.measure.costmodel import CALIBRATION_CURVE, machine_load  # noqa: E402
from harness.results import load_results, markdown_table  # noqa: E402
from harness.run.sweep import run_experiment  # noqa: E402


def size_config(cfg: dict, size: str, base_size: str) -> dict:
    """The config for another model size: its random weights, the middle L only."""
    if size == base_size:
        return cfg
    out = json.loads(json.dumps(cfg))
    (name,) = out["checkpoints"]
    out["checkpoints"][name]["path"] = f"random:{size}"
    lens = sorted(out["seq_lens"])
    out["seq_lens"] = [lens[len(lens) // 2]]
    out["samplers"] = [
        {**s, "params": {**s.get("params", {}), "block_size": 8}} if s["sampler"] == "bd3lm" else s
        for s in out["samplers"]
    ]
    out["name"] = f"{cfg['name']}-{size}"
    return out


def fed_shapes(row: pd.Series) -> str:
    """The tokens per call a cell feeds, and whether each is a calibration point."""
    p = json.loads(row["cell_config"])["params"]
    L = int(row["seq_len"])
    shapes = {
        "mdlm": [L],
        "esolm": [1, 2],
        "ar": [1],
        "bd3lm": [int(p.get("block_size", 0))],
    }.get(row["sampler"], [])
    marks = [f"{n}{'' if n in CALIBRATION_CURVE else '*'}" for n in shapes]
    return ", ".join(marks)


def variant(row: pd.Series) -> str:
    """The cell's defining parameter (block size and cache, T)."""
    p = json.loads(row["cell_config"])["params"]
    if row["sampler"] == "bd3lm":
        return f"L′={p['block_size']} {p['cache']}"
    if row["sampler"] == "mdlm":
        return f"T={p['num_steps']}"
    return ""


def heldout_table(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per ok cell of the runs: measured vs predicted seconds and the error."""
    df = pd.concat([load_results(d) for d in run_dirs], ignore_index=True)
    df = df[df["status"] == "ok"].copy()
    df["variant"] = df.apply(variant, axis=1)
    df["fed_tokens"] = df.apply(fed_shapes, axis=1)
    df["measured_s"] = df["wall_s"].astype(float)
    df["predicted_s"] = df["predicted_s"].astype(float)
    df["error"] = df["measured_s"] / df["predicted_s"] - 1
    df["error_pct"] = [f"{e:+.1%}" if math.isfinite(e) else "–" for e in df["error"]]
    df["env"] = [str(e)[:8] for e in df["env_id"]]
    cols = ["model_size", "sampler", "variant", "seq_len", "fed_tokens", "nfe_total", "env"]
    cols += ["measured_s", "predicted_s", "error_pct", "wall_s_cv"]
    return df.sort_values(["model_size", "sampler", "variant", "seq_len"])[cols + ["error"]]


def summary(t: pd.DataFrame) -> str:
    """Markdown bullets: the error over all cells and per (model size, sampler)."""
    e = t["error"].dropna()
    if not len(e):
        return "No cell has a prediction."
    a = e.abs()
    lines = [
        f"* cells: {len(t)}; with a prediction: {len(e)}",
        f"* |error|: median {a.median():.1%}, mean {a.mean():.1%}, max {a.max():.1%} "
        f"(signed: {e.min():+.1%} … {e.max():+.1%})",
        f"* within ±10 %: {(a <= 0.10).sum()} of {len(e)}; within ±20 %: {(a <= 0.20).sum()}",
    ]
    for (size, sampler), g in t.groupby(["model_size", "sampler"]):
        ge = g["error"].dropna()
        if len(ge):
            lines.append(
                f"* {size} {sampler}: {ge.min():+.1%} … {ge.max():+.1%} over {len(ge)} cells"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the held-out cells, print and write the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/costmodel_heldout.yaml"))
    ap.add_argument("--sizes", default="cpu-s,cpu-m", help="model sizes, the config's first")
    ap.add_argument("--out", default=str(ROOT / "docs/results/costmodel_heldout.md"))
    ap.add_argument(
        "--tag", default="", help="fresh runs named <config name>[-<size>]-<tag> (default: resume)"
    )
    args = ap.parse_args(argv)
    base = yaml.safe_load(Path(args.config).read_text())
    base_size = next(iter(base["checkpoints"].values()))["path"].removeprefix("random:")
    loads, run_dirs = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            cfg = size_config(base, size, base_size)
            path = Path(tmp) / f"{cfg['name']}.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            loads.append(machine_load())
            run_id = f"{cfg['name']}-{args.tag}" if args.tag else None
            run_dirs.append(run_experiment(path, run_id=run_id))
            loads.append(machine_load())
    elapsed = time.perf_counter() - t0
    t = heldout_table(run_dirs)
    cols = [c for c in t.columns if c != "error"]
    load = np.nanmax(loads) if loads else math.nan
    md = (
        "# Cost model on held-out shapes\n\n"
        f"Command: `python scripts/costmodel_heldout.py` (config `configs/costmodel_heldout.yaml`;"
        f" runs: {', '.join(d.name for d in run_dirs)}; {elapsed / 60:.1f} min wall).\n\n"
        "The cost model is calibrated at 1, 2, 4, 16, 64 and 512 fed tokens per call (the CPU "
        "Table 11 shapes). These cells feed other shapes (`fed_tokens`, * = not a calibration "
        "point): full forwards at L = 96 / 192 / 384, BD3-LM blocks of L′ = 8 and 32, and a model "
        "size Table 11 never ran (cpu-m, d = 256, its own calibration). measured_s: median wall "
        "seconds of one execute (profile mode: network calls only); predicted_s: the runner's "
        "table-model prediction from the calls the cell made; error = measured / predicted − 1 "
        "(positive: the model is optimistic).\n\n"
        f"Machine load during the runs (1-min load average per CPU, max seen): {load:.1f}. "
        "This box is shared. Contention during these timed runs slows the measured cells (errors "
        "biased positive); contention when the calibration and op table were measured and cached "
        "(possibly in an earlier run) inflates the predictions (errors biased negative). "
        "Re-measure on a quiet machine with a fresh $DLMBENCH_CACHE_DIR for clean numbers. "
        "`env`: the environment hash of the process that ran the cell (a resumed "
        "run can mix thread counts; each cell is predicted with the calibration of its own "
        "thread count).\n\n"
        "## Summary\n\n" + summary(t) + "\n\n## Per cell\n\n" + markdown_table(t, cols) + "\n"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
