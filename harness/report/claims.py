"""The claims report: every published speed ratio next to what we measure and what we predict.

``dlmbench report claims RUN`` lists, for each ratio in ``baselines/data/claims.yaml``:

* ``measured``: the ratio of our median wall times (numerator cell / denominator cell), with a
  bootstrap 95 % CI over the repeats;
* ``predicted_here``: the ratio of the cost model's predictions for those cells on this machine
  (``predicted_s``, calibrated from micro-measurements only, never from sampler timings);
* ``predicted_paper``: the cost model's ratio for the paper's setting (its L, batch, DiT-small,
  bf16) on the paper's hardware, from spec-sheet peaks plus a per-call overhead;
* ``published`` and its tolerance band; and two verdicts:
  ``model_here`` (measured within ±20 % of predicted_here: the model explains our measurement) and
  ``model_paper`` (predicted_paper inside the published band: the model reproduces the claim).

Our runs rarely use the paper's L or batch (a CPU cannot run DiT-small at L = 8192). Claims are
then mapped by *role*: the paper lengths of a table are matched in order to the run's lengths
(e.g. 2048 → 128, 8192 → 512 in the CPU-scaled Table 11), and likewise batch sizes, and the
report says so in ``mapping``. A claim is listed once per variant of the run's cells
(:func:`pair_cells`): BD3-LM once per cache implementation present (``reference`` = faithful to
kuleshov-group/bd3lms, ``efficient`` = fair), and the two cells of every ratio agree on each
parameter that varies and is not the claim's axis. The measured ratio's 95 % CI is shown only
when both cells have at least :data:`MIN_CI_REPEATS` repeats; ``nfe_check`` compares our NFE per
token with the paper's where the published row gives an NFE.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from baselines import load_baselines, load_claims
from harness.results import atomic_write, load_results, markdown_table, resolve_run

MODEL_TOLERANCE = 0.20
"""Relative band within which the cost model is said to explain a measured ratio."""

PAPER_CALL_OVERHEAD_S = {"A6000": 13.3 / 2047, "H200": None}
"""Per-call fixed overhead of the paper's implementation, which no paper publishes.

A6000: inferred from Eso-LMs Table 11's AR row (13.3 s for 2047 KV-cached calls at batch 1 =
6.5 ms per call), since AR at batch 1 is pure per-call latency (published-numbers.md §8). This is
the one parameter taken from a published timing, and it is taken from AR only: every other
method's predicted time is a genuine prediction. H200 (batch 512) is compute bound: None = 0.
"""


def _params(cell_config: str) -> dict[str, Any]:
    return json.loads(cell_config)["params"]


def _matches(row: pd.Series, sampler: str, params: dict[str, Any]) -> bool:
    """Whether our cell row is the claim side's method (sampler + the params the claim fixes)."""
    if row["sampler"] != sampler:
        return False
    ours = _params(row["cell_config"])
    for key, val in params.items():
        name = key.removeprefix("p_")
        if name in ("steps_per_block", "top_p", "num_tries"):
            continue  # first-hitting ignores T′; nucleus and resampling are off while timing
        if val is None or (isinstance(val, float) and math.isnan(val)):
            continue
        if name in ours and not math.isclose(float(ours[name]), float(val), rel_tol=1e-9):
            return False
    return _same_decoding(sampler, params, ours)


def _same_decoding(sampler: str, params: dict[str, Any], ours: dict[str, Any]) -> bool:
    """Whether a BD3-LM cell decodes like the claim's side.

    A claim timed at one token per call (T′ ≥ L′, e.g. Table 11's T′ = 5000) matches only our
    cells that also decode one token per call (first-hitting, or T′ ≥ L′): an ancestral cell
    with T′ < L′ from a throughput grid is a different workload.
    """
    spb, bs = params.get("p_steps_per_block"), params.get("p_block_size")
    if sampler != "bd3lm" or spb is None or bs is None or float(spb) < float(bs):
        return True
    if ours.get("mode") == "first_hitting":
        return True
    return float(ours.get("steps_per_block", 0)) >= float(ours.get("block_size", math.inf))


def role_map(paper_values: list[int], ours: list[int]) -> dict[int, int]:
    """Map the paper's values of one axis onto ours: identity where any match, else by rank.

    A run that contains some of the paper's values (a GPU run at L = 8192) maps only those; a
    scaled run with none of them (a CPU run at L = 128, 512) maps by rank, and with fewer of ours
    than the paper's the last of ours serves the remaining paper values.
    """
    paper_sorted, ours_sorted = sorted(set(paper_values)), sorted(set(ours))
    if not ours_sorted:
        return {}
    exact = {v: v for v in paper_sorted if v in ours_sorted}
    if exact:  # a run at the paper's own values: map those, leave the others unmeasured
        return exact
    return {v: ours_sorted[min(i, len(ours_sorted) - 1)] for i, v in enumerate(paper_sorted)}


def bootstrap_ratio_ci(num: list[float], den: list[float], n: int = 2000, seed: int = 0):
    """95 % CI of median(num)/median(den), resampling each side's repeats."""
    a, b = np.asarray(num, float), np.asarray(den, float)
    if len(a) < 2 or len(b) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    ra = np.median(rng.choice(a, (n, len(a))), axis=1)
    rb = np.median(rng.choice(b, (n, len(b))), axis=1)
    r = ra / rb
    return (float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975)))


def paper_prediction(
    row: pd.Series, seq_len: int, batch: int, hardware: str
) -> tuple[float, float]:
    """Cost-model (seconds, FLOPs) of our row's sampler at the paper's L, batch, DiT-small, bf16.

    Seconds use the spec-sheet roofline of ``hardware`` with :data:`PAPER_CALL_OVERHEAD_S`.
    """
    from harness.measure.costmodel import Peaks, predict_seconds, sample_cost
    from harness.model.network import DiTConfig
    from samplers import SAMPLERS

    cfg = json.loads(row["cell_config"])
    cls = SAMPLERS.get(cfg["sampler"])
    sampler = cls(cls.config_class(**cfg["params"]))
    model_cfg = DiTConfig.from_size(
        "small",
        family=row["family"],
        vocab_size=50258,
        model_length=1024,
        mask_index=50257,
        bos_index=50256,
        eos_index=50256,
    )
    calls = sampler.expected_calls(model_cfg, batch_size=batch, seq_len=seq_len)
    overhead = PAPER_CALL_OVERHEAD_S.get(hardware) or 0.0
    peaks = Peaks.from_spec(hardware, call_overhead_s=overhead)
    secs = float(
        predict_seconds(model_cfg, calls, batch, peaks, 2, method="roofline", combine="max")
    )
    return secs, float(sample_cost(model_cfg, calls, batch, 2)["flops_analytic"])


def _side(df: pd.DataFrame, sampler: str, params: dict, seq_len: int, batch: int) -> pd.DataFrame:
    sel = df[(df["seq_len"] == seq_len) & (df["batch_size"] == batch) & (df["status"] == "ok")]
    return sel[sel.apply(lambda r: _matches(r, sampler, params), axis=1)] if len(sel) else sel


IDENTITY_DIMS = ("model_size", "checkpoint", "dtype", "timing_mode", "device")
"""Non-``p_*`` columns that must also agree between the two cells of a ratio when they vary."""

MIN_CI_REPEATS = 3
"""Timed repeats each cell needs before the report shows a 95 % CI (the paper configs use 3)."""

NFE_TOLERANCE = 0.05
"""Relative band within which our NFE per token matches the paper's (``nfe_check``)."""


def _norm(v: Any) -> Any:
    """A cell value as a hashable, comparable key (NaN and None → None; 4.0 → 4)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | float | np.integer | np.floating):
        f = float(v)
        return int(f) if f.is_integer() else f
    return str(v)


def _dims(rows: pd.DataFrame) -> list[str]:
    """The ``p_*`` (and identity) columns that take more than one value among ``rows``."""
    cols = [c for c in rows.columns if c.startswith("p_")] + [
        c for c in IDENTITY_DIMS if c in rows.columns
    ]
    return sorted(c for c in cols if len({_norm(v) for v in rows[c]}) > 1)


def _has(rows: pd.DataFrame, col: str) -> bool:
    """Whether every one of ``rows`` states ``col`` (the sampler has that parameter)."""
    return col in rows.columns and all(_norm(v) is not None for v in rows[col])


def _axis(num_b: pd.Series, den_b: pd.Series) -> set[str]:
    """The claim's own axis: ``p_*`` values both published rows state, and state differently."""
    return {
        k
        for k in num_b.index
        if k.startswith("p_")
        and not pd.isna(num_b[k])
        and k in den_b.index
        and not pd.isna(den_b[k])
        and _norm(num_b[k]) != _norm(den_b[k])
    }


def _groups(rows: pd.DataFrame, keys: list[str]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """``rows`` grouped by their values of ``keys`` (in run order); seeds pool in one group."""
    out: dict[tuple, pd.DataFrame] = {}
    for _, r in rows.iterrows():
        k = tuple(_norm(r[c]) for c in keys)
        out[k] = pd.concat([out[k], r.to_frame().T]) if k in out else r.to_frame().T
    return [(dict(zip(keys, k, strict=True)), g) for k, g in out.items()]


def _label(shared: dict[str, Any], num_only: dict[str, Any], den_only: dict[str, Any]) -> str:
    """A variant label: the numerator's values, then the denominator's own (``den k=v``).

    ``cache`` shows by its value alone (``reference`` / ``efficient``), others as ``k=v``.
    """

    def fmt(d: dict[str, Any], prefix: str = "") -> list[str]:
        return [
            str(v) if k == "p_cache" and not prefix else f"{prefix}{k.removeprefix('p_')}={v}"
            for k, v in d.items()
        ]

    return "; ".join(fmt({**shared, **num_only}) + fmt(den_only, "den "))


def pair_cells(
    num_rows: pd.DataFrame, den_rows: pd.DataFrame, axis: set[str] = frozenset()
) -> list[dict[str, Any]]:
    """Pair the numerator's cells with the denominator's, on every parameter that varies.

    A column (a ``p_*`` parameter, or one of :data:`IDENTITY_DIMS`) that is not the claim's own
    ``axis`` pairs the cells when both samplers have it and it takes more than one value over
    the two sides' cells (e.g. ``cache`` for BD3-LM over BD3-LM): the two cells must agree on it,
    and a value on one side only is returned unpaired (``den`` or ``num`` None), never divided
    by another variant. A column only one side has that varies among that side's cells
    (BD3-LM's ``cache`` against Eso-LM, Eso-LM's ``kv_cache``, an ``alpha0_eval`` the paper row
    leaves empty) makes each of its values its own variant, crossed with the other side's.
    Cells that differ only by seed are pooled.

    Returns:
        One dict per variant: ``label``, ``num`` and ``den`` (a DataFrame of pooled cells, or
        None when unpaired).
    """
    both = pd.concat([num_rows, den_rows])
    shared = [d for d in _dims(both) if d not in axis and _has(num_rows, d) and _has(den_rows, d)]
    num_only = [d for d in _dims(num_rows) if d not in axis and d not in shared]
    den_only = [d for d in _dims(den_rows) if d not in axis and d not in shared]
    num_g = _groups(num_rows, shared + num_only)
    den_g = _groups(den_rows, shared + den_only)
    out = []
    for nk, ng in num_g:
        nsh = {d: nk[d] for d in shared}
        matches = [(dk, dg) for dk, dg in den_g if all(dk[d] == nsh[d] for d in shared)]
        for dk, dg in matches:
            lbl = _label(nsh, {d: nk[d] for d in num_only}, {d: dk[d] for d in den_only})
            out.append({"label": lbl, "num": ng, "den": dg})
        if not matches:
            out.append({"label": _label(nsh, {d: nk[d] for d in num_only}, {}), "num": ng})
    for dk, dg in den_g:
        dsh = {d: dk[d] for d in shared}
        if not any(all(nk[d] == dsh[d] for d in shared) for nk, _ in num_g):
            out.append({"label": _label(dsh, {}, {d: dk[d] for d in den_only}), "den": dg})
    return out


def _walls(cells: pd.DataFrame) -> list[float]:
    """Every timed repeat of the (pooled) cells: the concatenated ``wall_s_all`` lists."""
    out: list[float] = []
    for v in cells["wall_s_all"]:
        out.extend(json.loads(v) if isinstance(v, str) else list(v))
    return [float(x) for x in out]


def nfe_check(ours: pd.DataFrame, paper: pd.Series, our_L: int) -> tuple[str, float, float]:
    """Our NFE per token vs the paper's, where the published row states an NFE.

    The paper's NFE is compared in the results column its ``nfe_kind`` names, per token
    (NFE / L), since a scaled run's L differs from the paper's.

    Returns:
        (verdict, ours per token, paper's per token); verdict ``""`` when the paper gives none.
    """
    kind, nfe = paper.get("nfe_kind"), paper.get("nfe")
    if kind is None or pd.isna(kind) or pd.isna(nfe) or kind not in ours.columns:
        return "", math.nan, math.nan
    mine = float(pd.to_numeric(ours[kind], errors="coerce").mean()) / our_L
    theirs = float(nfe) / float(paper["seq_len"])
    ok = math.isfinite(mine) and abs(mine / theirs - 1) <= NFE_TOLERANCE
    return ("match" if ok else "mismatch"), mine, theirs


def claims_table(run: str | Path, allow_noisy: bool = False) -> pd.DataFrame:
    """One row per (published claim, cache variant): measured, predicted and published ratios.

    A ratio with a ``noisy`` cell on either side (``trust``, :mod:`harness.measure.contention`)
    keeps its numbers but gets no verdict (``not judged``) unless ``allow_noisy``.
    """
    run_dir = resolve_run(str(run))
    df = load_results(run_dir)
    base = load_baselines().set_index("row_id")
    claims = load_claims()
    records = []
    for _, c in claims.iterrows():
        tables = {base.loc[c["numerator_row"], "table"], base.loc[c["denominator_row"], "table"]}
        paper_rows = base[base["table"].isin(tables)]
        Lmap = role_map(
            [int(x) for x in paper_rows["seq_len"].dropna()],
            [int(x) for x in df["seq_len"].dropna()],
        )
        Bmap = role_map(
            [int(x) for x in paper_rows["batch_size"].dropna()],
            [int(x) for x in df["batch_size"].dropna()],
        )
        records.extend(_claim_records(c, df, base, Lmap, Bmap, allow_noisy))
    return pd.DataFrame.from_records(records)


def _claim_records(c, df, base, Lmap, Bmap, allow_noisy=False) -> list[dict[str, Any]]:
    num_b, den_b = base.loc[c["numerator_row"]], base.loc[c["denominator_row"]]
    rec: dict[str, Any] = {
        "claim_id": c["claim_id"],
        "claim": c["claim_text"],
        "published": c["published_value"],
        "band_lo": c["band_lo"],
        "band_hi": c["band_hi"],
        "hardware": c["hardware"],
    }
    L_num = Lmap.get(int(num_b["seq_len"])) if not pd.isna(num_b["seq_len"]) else None
    L_den = Lmap.get(int(den_b["seq_len"])) if not pd.isna(den_b["seq_len"]) else None
    B = Bmap.get(int(num_b["batch_size"])) if not pd.isna(num_b["batch_size"]) else None
    if None in (L_num, L_den, B):
        return [{**rec, "status": "not measured: no matching cells in this run"}]
    paper_b = int(num_b["batch_size"])
    if (paper_b == 1) != (B == 1):  # batch-1 latency and large-batch throughput never mix
        return [
            {
                **rec,
                "status": f"not measured: other regime (paper batch {paper_b}, this run's "
                f"batch {B})",
            }
        ]
    rec["mapping"] = (
        f"L {int(num_b['seq_len'])}→{L_num}, {int(den_b['seq_len'])}→{L_den}; "
        f"batch {int(num_b['batch_size'])}→{B}"
    )
    num_rows = _side(df, num_b["sampler"], _row_params(num_b), L_num, B)
    den_rows = _side(df, den_b["sampler"], _row_params(den_b), L_den, B)
    if num_rows.empty or den_rows.empty:
        missing = num_b["sampler"] if num_rows.empty else den_b["sampler"]
        return [{**rec, "status": f"not measured: no ok cell for {missing} at the mapped L/b"}]
    hw = str(c["hardware"])
    out = []
    for pair in pair_cells(num_rows, den_rows, _axis(num_b, den_b)):
        r = {**rec, "variant": pair["label"]}
        num, den = pair.get("num"), pair.get("den")
        if num is None or den is None:
            side = "denominator" if den is None else "numerator"
            r["status"] = f"unpaired: no {side} cell of this variant"
            out.append(r)
            continue
        r = _pair_record(r, num, den, num_b, den_b, L_num, L_den, hw)
        out.append(r if allow_noisy else withhold_noisy(r, num, den))
    return out


def noisy_reasons(cells: pd.DataFrame) -> list[str]:
    """The distinct ``trust_reason`` kinds of the ``noisy`` cells among ``cells``."""
    if "trust" not in cells.columns:
        return []
    noisy = cells[cells["trust"] == "noisy"]
    kinds = {str(t).split(":")[0] for r in noisy["trust_reason"].dropna() for t in r.split("; ")}
    return sorted(kinds)


def withhold_noisy(r: dict[str, Any], num: pd.DataFrame, den: pd.DataFrame) -> dict[str, Any]:
    """A pair record whose cells include a ``noisy`` one: numbers kept, verdicts withheld."""
    kinds = noisy_reasons(pd.concat([num, den]))
    if not kinds:
        return r
    return {
        **r,
        "model_here": "not judged",
        "model_paper": "not judged",
        "status": f"noisy ({', '.join(kinds)}): no verdict; --allow-noisy judges it anyway",
    }


def _pair_record(r, num, den, num_b, den_b, L_num, L_den, hw) -> dict[str, Any]:
    """The measured, predicted and NFE columns of one (numerator, denominator) cell pair."""
    a, b = _walls(num), _walls(den)
    r["n_num"], r["n_den"] = len(a), len(b)
    r["measured"] = float(np.median(a) / np.median(b))
    if min(len(a), len(b)) >= MIN_CI_REPEATS:
        r["ci_lo"], r["ci_hi"] = bootstrap_ratio_ci(a, b)
        r["ci_note"] = ""
    else:
        r["ci_lo"] = r["ci_hi"] = math.nan
        r["ci_note"] = f"n<{MIN_CI_REPEATS}, no CI"
    r["predicted_here"] = float(num["predicted_s"].astype(float).mean()) / float(
        den["predicted_s"].astype(float).mean()
    )
    checks = [nfe_check(num, num_b, L_num), nfe_check(den, den_b, L_den)]
    if any(v for v, _, _ in checks):
        r["nfe_check"] = (
            ("mismatch" if any(v == "mismatch" for v, _, _ in checks) else "match")
            + " ("
            + ", ".join(
                f"{side} {m:.3g}·L vs {t:.3g}·L"
                for side, (v, m, t) in zip(("num", "den"), checks, strict=True)
                if v
            )
            + ")"
        )
    try:
        first_num, first_den = num.iloc[0], den.iloc[0]
        L_n, b_n = int(num_b["seq_len"]), int(num_b["batch_size"])
        L_d, b_d = int(den_b["seq_len"]), int(den_b["batch_size"])
        s_num, f_num = paper_prediction(first_num, L_n, b_n, hw)
        s_den, f_den = paper_prediction(first_den, L_d, b_d, hw)
        r["predicted_paper"] = s_num / s_den
        # What the published times imply: effective TFLOP/s of each side on the paper's GPU.
        r["paper_tflops_num"] = f_num / float(num_b["wall_s_mean"]) / 1e12
        r["paper_tflops_den"] = f_den / float(den_b["wall_s_mean"]) / 1e12
    except (ValueError, KeyError, TypeError) as e:
        r["predicted_paper"], r["paper_note"] = math.nan, f"{type(e).__name__}: {e}"
    r.update(verdicts(r))
    r["status"] = "ok"
    return r


def _row_params(b: pd.Series) -> dict[str, Any]:
    return {k: b[k] for k in b.index if k.startswith("p_") and not pd.isna(b[k])}


def verdicts(r: dict[str, Any]) -> dict[str, str]:
    """``model_here`` and ``model_paper`` verdicts (see the module docstring)."""
    out = {}
    m, p = r.get("measured", math.nan), r.get("predicted_here", math.nan)
    if math.isfinite(m) and math.isfinite(p) and p > 0:
        err = m / p - 1
        out["model_here"] = ("explained" if abs(err) <= MODEL_TOLERANCE else "unexplained") + (
            f" ({err:+.0%})"
        )
    else:
        out["model_here"] = "n/a"
    pp = r.get("predicted_paper", math.nan)
    lo, hi = r.get("band_lo", math.nan), r.get("band_hi", math.nan)
    if math.isfinite(pp) and math.isfinite(lo):
        out["model_paper"] = "reproduced" if lo <= pp <= hi else "not reproduced"
    else:
        out["model_paper"] = "n/a"
    return out


COLUMNS = [
    "claim_id",
    "variant",
    "mapping",
    "measured",
    "ci_lo",
    "ci_hi",
    "ci_note",
    "nfe_check",
    "predicted_here",
    "model_here",
    "predicted_paper",
    "published",
    "band_lo",
    "band_hi",
    "model_paper",
    "paper_tflops_num",
    "paper_tflops_den",
    "status",
]


def to_markdown(table: pd.DataFrame) -> str:
    """A Markdown rendering of :func:`claims_table` (numbers to 3 significant figures)."""
    return markdown_table(table, [c for c in COLUMNS if c in table.columns])


def write_report(
    run: str | Path, out: str | Path | None = None, allow_noisy: bool = False
) -> tuple[Path, Path]:
    """Write ``claims.md`` and ``claims.csv`` (atomically) into the run folder or ``out``."""
    run_dir = resolve_run(str(run))
    table = claims_table(run_dir, allow_noisy)
    dest = Path(out) if out else run_dir
    dest.mkdir(parents=True, exist_ok=True)
    md = (
        f"# Claims report: {run_dir.name}\n\n"
        f"model_here: measured vs this machine's cost-model prediction (±{MODEL_TOLERANCE:.0%});"
        " model_paper: the cost model's prediction for the paper's hardware and setting vs the "
        "published band (spec-sheet roofline plus a per-call overhead inferred from the AR "
        "row). paper_tflops_*: the effective TFLOP/s the published times imply for each side "
        "(analytic FLOPs / published seconds); a side far below the GPU's peak explains a "
        "ratio the roofline cannot.\n\n"
        "Pairing: the two cells of a ratio agree on every parameter that varies in the run and "
        "is not the claim's own axis (e.g. BD3-LM cache over BD3-LM cache); a variant present "
        "on one side only is listed as unpaired, never divided; a parameter only one side has "
        "(BD3-LM's cache against Eso-LM, Eso-LM's kv_cache) gives one row per value (variant, "
        "`den k=v` for the denominator's). measured: median of every repeat (numerator) / "
        f"median (denominator); ci_lo/ci_hi: bootstrap 95 % CI, shown only when each cell has "
        f"≥ {MIN_CI_REPEATS} repeats (ci_note says otherwise). nfe_check: our NFE per token vs "
        "the published row's (NFE / L, in the column its nfe_kind names, "
        f"±{NFE_TOLERANCE:.0%}), where the paper states one. A ratio with a cell whose timing "
        "is `noisy` (contention, high CV, too few repeats, throttling) keeps its numbers but "
        "gets no verdict"
        + (" (judged anyway: --allow-noisy)" if allow_noisy else "")
        + ".\n\n"
        + to_markdown(table)
    )
    p_md = atomic_write(dest / "claims.md", lambda p: p.write_text(md))
    p_csv = atomic_write(dest / "claims.csv", lambda p: table.to_csv(p, index=False))
    return p_md, p_csv


def cmd_report(args: argparse.Namespace) -> int:
    """``dlmbench report claims|matched|leaderboard RUN``."""
    if args.kind == "matched":
        from harness.report.matched import cmd_matched

        return cmd_matched(args)
    if args.kind == "leaderboard":
        from harness.report.leaderboard import cmd_leaderboard

        return cmd_leaderboard(args)
    md, _ = write_report(args.run, args.out, args.allow_noisy)
    print(md.read_text())
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report {claims,matched,leaderboard} RUN``."""
    from harness.report.leaderboard import add_arguments as add_leaderboard_arguments

    p = subparsers.add_parser(
        "report",
        help="reports over a run: claims (published ratios), matched (speed-ups at matched "
        "quality) or leaderboard (samplers ranked by accuracy under parallelism)",
    )
    p.add_argument("kind", choices=["claims", "matched", "leaderboard"], help="which report")
    p.add_argument("run", help="run folder, run id or experiment name")
    p.add_argument("--out", default=None, help="folder for the .md / .csv (default: the run)")
    p.add_argument(
        "--allow-noisy",
        action="store_true",
        help="judge ratios (claims) and fronts (matched) from rows whose trust is noisy too",
    )
    g = p.add_argument_group("matched")
    g.add_argument("--time", default="s_per_sample", help="time column (default s_per_sample)")
    g.add_argument("--quality", default="gen_ppl", help="quality column (default gen_ppl)")
    g.add_argument(
        "--by", default="sampler", help="method columns, comma-separated (default sampler)"
    )
    g.add_argument("--levels", type=int, default=5, help="quality levels per pair (default 5)")
    add_leaderboard_arguments(p)
    p.set_defaults(fn=cmd_report)
    return p
