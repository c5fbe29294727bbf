"""Paper-ready figures from result rows.

The speed-quality frontier, quality vs NFE, speed-up vs L and memory vs L.

Every figure takes a DataFrame with the ``docs/design.md`` result columns (plus, where relevant,
the published numbers from :mod:`baselines`) and an output path prefix, and writes
``<prefix>.png`` and ``<prefix>.pdf`` (each written to a temporary name, then renamed). The
``*_figure`` functions return the :class:`matplotlib.figure.Figure` instead, for callers that want
to adjust it; the ``plot_*`` functions draw and save, returning the paths written.

Figures are drawn on :class:`~matplotlib.figure.Figure` objects directly (no pyplot, no global
backend switch): PNGs are rendered by Agg, PDFs by the PDF backend with TrueType fonts.

Colours and markers are fixed per sampler in :data:`PALETTE`, the same in every figure; an
unknown sampler name gets a style derived from an MD5 hash of the name (stable across processes,
unlike ``hash()``), see :func:`style_for`.

The ``plot`` subcommand (:func:`add_parser`) draws every figure the columns of a results folder
allow.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.colors
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dlmcore.errors import UserError
from harness.report.frontier import higher_is_better, pareto_front, require_columns, usable_rows

__all__ = [
    "PALETTE",
    "PlotError",
    "Style",
    "add_parser",
    "cmd_plot",
    "frontier_figure",
    "memory_figure",
    "plot_frontier",
    "plot_memory_vs_length",
    "plot_quality_vs_nfe",
    "plot_speedup_vs_length",
    "quality_vs_nfe_figure",
    "save_figure",
    "speedup_figure",
    "style_for",
]


class PlotError(UserError, ValueError):
    """Bad input to a figure: missing columns, ambiguous selections, nothing to draw."""


@dataclass(frozen=True)
class Style:
    """How one sampler is drawn in every figure."""

    color: str
    marker: str


#: Fixed styles (seaborn "colorblind" hues, written out so a seaborn release cannot move them).
PALETTE: dict[str, Style] = {
    "esolm": Style("#0173B2", "o"),
    "esolm_interleaved": Style("#56B4E9", "P"),
    "mdlm": Style("#DE8F05", "s"),
    "mdlm_ancestral": Style("#DE8F05", "s"),
    "mdlm_first_hitting": Style("#D55E00", "D"),
    "bd3lm": Style("#029E73", "^"),
    "ar": Style("#404040", "X"),
    "sedd": Style("#CC78BC", "v"),
    "ssdlm": Style("#CA9161", "<"),
}
_FALLBACK_COLORS = ("#FBAFE4", "#949494", "#ECE133", "#8C564B", "#17BECF", "#BCBD22", "#9467BD")
_FALLBACK_MARKERS = ("h", "*", "p", "8", "d", ">")
_LINESTYLES = ("-", "--", ":", "-.")
_PUBLISHED_DASHES = ((0, (4, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (2, 3)))  # thin, dashed

#: Axis labels with units; other columns are labelled with their name.
LABELS = {
    "wall_s": "Time per batch, median (s)",
    "wall_s_mean": "Time per batch, mean (s)",
    "s_per_sample": "Time per sample (s)",
    "device_ms": "Device time per batch (ms)",
    "gen_ppl": "Generative perplexity",
    "gen_ppl_mean_per_sample": "Gen PPL, mean per sample",
    "mauve": "MAUVE",
    "entropy_nats": "Unigram entropy (nats)",
    "nfe_total": "NFE, all network calls",
    "nfe_denoise": "NFE, denoising calls",
    "peak_alloc_gb": "Peak allocated memory (GB)",
    "peak_reserved_gb": "Peak reserved memory (GB)",
    "peak_rss_gb": "Peak host memory (GB)",
    "seq_len": "Sequence length L (tokens)",
    "tokens_per_s": "Throughput (tokens/s)",
}
_NFE_COLUMNS = ("nfe_total", "nfe_denoise", "nfe_expected", "nfe_profile_sim")


def style_for(sampler: str) -> Style:
    """The colour and marker of ``sampler``: fixed for known names, hash-derived otherwise."""
    if sampler in PALETTE:
        return PALETTE[sampler]
    digest = int.from_bytes(hashlib.md5(str(sampler).encode()).digest()[:8], "big")
    return Style(
        _FALLBACK_COLORS[digest % len(_FALLBACK_COLORS)],
        _FALLBACK_MARKERS[(digest // len(_FALLBACK_COLORS)) % len(_FALLBACK_MARKERS)],
    )


def label_for(column: str) -> str:
    """Axis label of a results column, with its unit."""
    return LABELS.get(column, column)


@contextmanager
def _paper_style() -> Iterator[None]:
    """Readable fonts and a light grid for the duration of drawing and saving."""
    rc = {
        **sns.axes_style("whitegrid"),
        **sns.plotting_context("paper", font_scale=1.25),
        "pdf.fonttype": 42,  # TrueType: text stays editable in the PDF
        "ps.fonttype": 42,
        "savefig.dpi": 200,
        "legend.frameon": False,
    }
    with matplotlib.rc_context(rc):
        yield


def _new_figure(size: tuple[float, float] = (7.5, 4.2)) -> tuple[Figure, Axes]:
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def save_figure(fig: Figure, out_prefix: str | os.PathLike[str]) -> list[Path]:
    """Write ``fig`` to ``<out_prefix>.png`` and ``<out_prefix>.pdf`` atomically.

    Returns:
        The two paths written.
    """
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with _paper_style():
        for ext in ("png", "pdf"):
            target = prefix.with_name(f"{prefix.name}.{ext}")
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    fig.savefig(f, format=ext, bbox_inches="tight")
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            written.append(target)
    return written


# ---------------------------------------------------------------------------------------------
# Series: one per method (sampler, optionally split by more columns)
# ---------------------------------------------------------------------------------------------


def _keys(by: str | Sequence[str]) -> list[str]:
    keys = [by] if isinstance(by, str) else list(by)
    if not keys:
        raise PlotError("'by' is empty; give at least the column naming the method ('sampler').")
    return keys


def _series(df: pd.DataFrame, keys: list[str]) -> Iterator[tuple[str, Style, str, pd.DataFrame]]:
    """Yield (label, style, linestyle, rows) per group.

    Colour and marker follow the first key (the sampler); the linestyle is the group's rank among
    the groups sharing that first key.
    """
    rank: dict[Any, int] = {}
    for values, rows in df.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        head = str(values[0])
        extra = [f"{_short(k)}={_fmt(v)}" for k, v in zip(keys[1:], values[1:]) if not pd.isna(v)]
        label = head + (f" ({', '.join(extra)})" if extra else "")
        i = rank[head] = rank.get(head, -1) + 1
        yield label, style_for(head), _LINESTYLES[i % len(_LINESTYLES)], rows


def _short(column: str) -> str:
    return column[2:] if column.startswith("p_") else column


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _x_error(rows: pd.DataFrame, x: str) -> np.ndarray | None:
    """(2, n) horizontal error bars from the repeats: the CI of the median, or ± std of the mean."""
    cols = set(rows.columns)
    xs = rows[x].to_numpy(dtype=float)
    if x in ("wall_s", "s_per_sample") and {"wall_s_ci_lo", "wall_s_ci_hi"} <= cols:
        lo = rows["wall_s_ci_lo"].to_numpy(dtype=float)
        hi = rows["wall_s_ci_hi"].to_numpy(dtype=float)
        if x == "s_per_sample":
            if "batch_size" not in cols:
                return None
            bs = rows["batch_size"].to_numpy(dtype=float)
            lo, hi = lo / bs, hi / bs
        return np.clip(np.vstack([xs - lo, hi - xs]), 0.0, None)
    if x == "wall_s_mean" and "wall_s_std" in cols:
        std = rows["wall_s_std"].to_numpy(dtype=float)
        return np.vstack([np.minimum(std, xs * 0.999), std])  # stays positive on a log axis
    return None


# ---------------------------------------------------------------------------------------------
# (a) the speed-quality frontier
# ---------------------------------------------------------------------------------------------


def frontier_figure(
    df: pd.DataFrame,
    *,
    x: str = "s_per_sample",
    y: str = "gen_ppl",
    by: str | Sequence[str] = "sampler",
    baselines: pd.DataFrame | None = None,
    logx: bool = True,
    logy: bool | None = None,
    title: str | None = None,
) -> Figure:
    """Each method's points, its Pareto hull (a line through its front) and CI error bars.

    Args:
        df: result rows with ``x``, ``y`` and the ``by`` columns (``status != 'ok'`` and rows
            missing ``x`` or ``y`` are skipped). Error bars come from ``wall_s_ci_lo/hi`` (divided
            by ``batch_size`` for ``s_per_sample``), or ``wall_s_std`` for ``wall_s_mean``.
        x: the time column (lower is better).
        y: the quality column; its direction comes from ``frontier.HIGHER_IS_BETTER``.
        by: the column(s) defining a method; colour follows the first (the sampler).
        baselines: published rows (:func:`baselines.load_baselines`), drawn hollow with their
            hulls dashed; ``wall_s`` falls back to the published ``wall_s_mean``.
        logx: log time axis.
        logy: log quality axis; default: log for perplexities, linear otherwise.
        title: optional axes title.

    Raises:
        PlotError: a column is missing (all named), or no row has both ``x`` and ``y``.
    """
    keys = _keys(by)
    require_columns(df, [*keys, x, y], "frontier_figure", error=PlotError)
    rows = usable_rows(df, [x, y], error=PlotError)
    if rows.empty:
        raise PlotError(f"frontier_figure: no row has both {x!r} and {y!r} (and status 'ok').")
    with _paper_style():
        fig, ax = _new_figure()
        for label, st, ls, g in _series(rows, keys):
            ax.errorbar(
                g[x], g[y], xerr=_x_error(g, x), fmt=st.marker, color=st.color, ms=6,
                elinewidth=1, capsize=2, label=label, zorder=3,
            )  # fmt: skip
            front = pareto_front(g, x, y)
            ax.plot(front[x], front[y], ls=ls, color=st.color, lw=1.5, zorder=2)
        _grey_noisy(ax, rows, x, y)
        if baselines is not None:
            _draw_published(ax, baselines, x, y, keys)
        _finish(ax, x, y, logx, _log_default(y) if logy is None else logy, title)
    return fig


NOISY_LABEL = "noisy timing (trust: contention, high CV, …)"
"""Legend entry of the grey marks laid over rows whose timing is not to be trusted."""


def _grey_noisy(ax: Axes, rows: pd.DataFrame, x: str, y: str) -> None:
    """Grey out the points of rows whose ``trust`` is ``noisy`` (their times may be inflated)."""
    if "trust" not in rows.columns:
        return
    noisy = rows[rows["trust"] == "noisy"]
    if len(noisy):
        ax.scatter(
            noisy[x], noisy[y], s=70, color="0.6", alpha=0.85, marker="o", zorder=4,
            label=NOISY_LABEL,
        )  # fmt: skip


def _draw_published(ax: Axes, bl: pd.DataFrame, x: str, y: str, keys: list[str]) -> None:
    bx = x if x in bl.columns and bl[x].notna().any() else {"wall_s": "wall_s_mean"}.get(x, x)
    keys = [k for k in keys if k in bl.columns]
    require_columns(bl, [*keys, bx, y], "the published overlay", error=PlotError)
    rows = usable_rows(bl, [bx, y], error=PlotError)
    for label, st, ls, g in _series(rows, keys or ["sampler"]):
        hw = ", ".join(sorted(g["hardware"].dropna().unique())) if "hardware" in g else ""
        ax.scatter(
            g[bx], g[y], marker=st.marker, facecolors="none", edgecolors=st.color, s=36,
            label=f"{label} (published{', ' + hw if hw else ''})", zorder=3,
        )  # fmt: skip
        front = pareto_front(g, bx, y)
        dashes = _PUBLISHED_DASHES[_LINESTYLES.index(ls)]
        ax.plot(front[bx], front[y], ls=dashes, color=st.color, lw=1, alpha=0.7, zorder=1)


def _log_default(y: str) -> bool:
    return "ppl" in y


def _finish(
    ax: Axes, x: str, y: str, logx: bool, logy: bool, title: str | None, better: bool = True
) -> None:
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    if logx:
        _plain_log_ticks(ax.xaxis)
    if logy:
        _plain_log_ticks(ax.yaxis)
    ylabel = label_for(y)
    if better and y in ("gen_ppl", "gen_ppl_mean_per_sample", "gen_ppl_median_per_sample", "mauve"):
        ylabel += " (higher is better)" if higher_is_better(y) else " (lower is better)"
    ax.set_xlabel(label_for(x))
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _plain_log_ticks(axis: Any) -> None:
    """Label a log axis 20, 30, 50, 100 rather than 2×10¹ (minor labels at 2, 3 and 5 only)."""

    def plain(v: float, _: Any) -> str:
        return f"{v:g}"

    def minor(v: float, _: Any) -> str:
        lead = f"{v:e}"[0]
        return f"{v:g}" if lead in "235" else ""

    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(plain))
    axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(minor))


def plot_frontier(
    df: pd.DataFrame, out_prefix: str | os.PathLike[str], **kwargs: Any
) -> list[Path]:
    """Draw :func:`frontier_figure` (same keyword arguments) and save it; returns the paths."""
    return save_figure(frontier_figure(df, **kwargs), out_prefix)


# ---------------------------------------------------------------------------------------------
# (b) quality vs NFE
# ---------------------------------------------------------------------------------------------


def quality_vs_nfe_figure(
    df: pd.DataFrame,
    *,
    nfe: str = "nfe_total",
    y: str = "gen_ppl",
    by: str | Sequence[str] = "sampler",
    baselines: pd.DataFrame | None = None,
    logy: bool | None = None,
    title: str | None = None,
) -> Figure:
    """Quality against the number of network calls, one line per method (log NFE axis).

    Args:
        df: result rows with ``nfe``, ``y`` and the ``by`` columns.
        nfe: the NFE column (``nfe_total`` or ``nfe_denoise``).
        y: the quality column.
        by: the column(s) defining a method.
        baselines: published rows; their NFE is the column ``nfe`` where filled, else the
            published ``nfe`` as printed (whatever it counted: see its ``nfe_kind``).
        logy: log quality axis; default: log for perplexities.
        title: optional axes title.

    Raises:
        PlotError: a column is missing, or no row has both values.
    """
    keys = _keys(by)
    require_columns(df, [*keys, nfe, y], "quality_vs_nfe_figure", error=PlotError)
    rows = usable_rows(df, [nfe, y], error=PlotError)
    if rows.empty:
        raise PlotError(f"quality_vs_nfe_figure: no row has both {nfe!r} and {y!r}.")
    with _paper_style():
        fig, ax = _new_figure()
        for label, st, ls, g in _series(rows, keys):
            g = g.sort_values(nfe)
            ax.plot(g[nfe], g[y], ls=ls, marker=st.marker, color=st.color, label=label, ms=6)
        if baselines is not None:
            bl = baselines.copy()
            if nfe in _NFE_COLUMNS and "nfe" in bl.columns:
                filled = bl[nfe] if nfe in bl.columns else pd.Series(pd.NA, index=bl.index)
                bl[nfe] = filled.astype("Float64").fillna(bl["nfe"].astype("Float64"))
            _draw_published(ax, bl, nfe, y, keys)
        _finish(ax, nfe, y, True, _log_default(y) if logy is None else logy, title)
    return fig


def plot_quality_vs_nfe(
    df: pd.DataFrame, out_prefix: str | os.PathLike[str], **kwargs: Any
) -> list[Path]:
    """Draw :func:`quality_vs_nfe_figure` (same keyword arguments) and save it."""
    return save_figure(quality_vs_nfe_figure(df, **kwargs), out_prefix)


# ---------------------------------------------------------------------------------------------
# (c) speed-up vs L: measured ratios next to the published ones
# ---------------------------------------------------------------------------------------------

Selector = str | Mapping[str, Any]


def _selector(sel: Selector) -> dict[str, Any]:
    out = {"sampler": sel} if isinstance(sel, str) else dict(sel)
    if "sampler" not in out:
        raise PlotError(f"selector {sel!r} names no 'sampler'; write e.g. {{'sampler': 'bd3lm'}}.")
    return out


def _sel_label(sel: dict[str, Any]) -> str:
    extra = [f"{_short(k)}={_fmt(v)}" for k, v in sel.items() if k != "sampler"]
    return sel["sampler"] + (f" ({', '.join(extra)})" if extra else "")


def _select(df: pd.DataFrame, sel: dict[str, Any]) -> pd.DataFrame:
    require_columns(df, list(sel), "the speed-up selector", error=PlotError)
    mask = np.ones(len(df), dtype=bool)
    for k, v in sel.items():
        mask &= (df[k] == v).fillna(False).to_numpy(dtype=bool)
    return df[mask]


def default_pairs(df: pd.DataFrame, denominator: str = "esolm") -> list[tuple[Selector, Selector]]:
    """Every other sampler over ``denominator``, split by each ``p_*`` column that varies.

    E.g. BD3-LM rows with ``p_block_size`` ∈ {4, 16} and ``p_cache`` ∈ {reference, efficient}
    give four numerators.

    Raises:
        PlotError: ``denominator`` is not among the rows' samplers.
    """
    samplers = sorted(df["sampler"].dropna().unique())
    if denominator not in samplers:
        raise PlotError(
            f"no {denominator!r} rows to divide by (samplers: {', '.join(samplers)}); pass pairs="
            "[(numerator, denominator), ...]."
        )
    pairs: list[tuple[Selector, Selector]] = []
    for s in (s for s in samplers if s != denominator):
        rows = df[df["sampler"] == s]
        varying = [c for c in rows.columns if c.startswith("p_") and rows[c].dropna().nunique() > 1]
        if not varying:
            pairs.append((s, denominator))
            continue
        combos = rows[varying].dropna().drop_duplicates().sort_values(varying)
        for combo in combos.itertuples(index=False):
            sel = {"sampler": s, **{c: _plain(v) for c, v in zip(varying, combo, strict=True)}}
            pairs.append((sel, denominator))
    return pairs


def _plain(v: Any) -> Any:
    """A numpy scalar as a plain int (whole numbers) or float; strings and flags unchanged."""
    if isinstance(v, str | bool) or not isinstance(v, int | float | np.number):
        return v
    f = float(v)
    return int(f) if f.is_integer() else f


def _measured_ratios(
    df: pd.DataFrame, num: dict, den: dict, time_col: str, length_col: str
) -> pd.DataFrame:
    """Per L: num time / den time, with a conservative interval from the two CIs."""
    out = []
    a, b = _select(df, num), _select(df, den)
    for L in sorted(set(a[length_col]) & set(b[length_col])):
        ra, rb = a[a[length_col] == L], b[b[length_col] == L]
        for sel, r in ((num, ra), (den, rb)):
            if len(r) != 1:
                raise PlotError(
                    f"{len(r)} rows match {sel} at {length_col}={L}; a ratio needs exactly one. "
                    "Add the distinguishing column to the selector (e.g. {'sampler': 'bd3lm', "
                    "'p_block_size': 4}) or filter the rows (batch_size, p_num_steps, ...)."
                )
        t1, t2 = float(ra[time_col].iloc[0]), float(rb[time_col].iloc[0])
        lo = hi = np.nan
        if time_col == "wall_s" and {"wall_s_ci_lo", "wall_s_ci_hi"} <= set(df.columns):
            lo = float(ra["wall_s_ci_lo"].iloc[0]) / float(rb["wall_s_ci_hi"].iloc[0])
            hi = float(ra["wall_s_ci_hi"].iloc[0]) / float(rb["wall_s_ci_lo"].iloc[0])
        noisy = any("trust" in r.columns and r["trust"].iloc[0] == "noisy" for r in (ra, rb))
        out.append({"L": int(L), "ratio": t1 / t2, "lo": lo, "hi": hi, "noisy": noisy})
    return pd.DataFrame(out, columns=["L", "ratio", "lo", "hi", "noisy"])


def _published_ratios(claims: pd.DataFrame | None, num: dict, den: dict) -> pd.DataFrame:
    """Published ratios (``derived`` claims at one L) whose rows match the two selectors.

    A claim stated the other way round (e.g. Eso-LM / AR for an ``ar / esolm`` pair) is inverted,
    band included. A selector key the claim does not state (e.g. ``p_cache``: the papers name no
    cache mode) does not rule it out. ``attrs["num"]`` / ``attrs["den"]``: the selectors cut to
    the keys the matched claims state, for the bars' label.
    """
    cols = ["L", "ratio", "lo", "hi", "hardware"]
    out = []
    stated: tuple[dict, dict] = (_stated(num, {}), _stated(den, {}))
    for c in () if claims is None else claims.itertuples():
        if c.source_kind != "derived" or pd.isna(c.seq_len):
            continue
        n = (c.numerator_sampler, c.numerator_params)
        d = (c.denominator_sampler, c.denominator_params)
        if _side_matches(*n, num) and _side_matches(*d, den):
            ratio, lo, hi = c.published_value, c.band_lo, c.band_hi
            stated = (_stated(num, n[1]), _stated(den, d[1]))
        elif _side_matches(*d, num) and _side_matches(*n, den):
            ratio, lo, hi = 1 / c.published_value, 1 / c.band_hi, 1 / c.band_lo
            stated = (_stated(num, d[1]), _stated(den, n[1]))
        else:
            continue
        out.append(
            {"L": int(c.seq_len), "ratio": ratio, "lo": lo, "hi": hi, "hardware": c.hardware}
        )
    frame = pd.DataFrame(out, columns=cols).drop_duplicates("L")
    frame.attrs.update(num=stated[0], den=stated[1])
    return frame


def _side_matches(sampler: str, params: dict, sel: dict) -> bool:
    return sampler == sel["sampler"] and all(
        params.get(k) == v for k, v in sel.items() if k != "sampler" and k in params
    )


def _stated(sel: dict, params: dict) -> dict:
    """``sel`` without the keys that a claim's ``params`` do not state."""
    return {k: v for k, v in sel.items() if k == "sampler" or k in params}


def _shade(color: str, rank: int) -> str:
    """``color`` mixed with white by 35 % per rank: sub-series of one sampler in bar charts."""
    rgb = np.array(matplotlib.colors.to_rgb(color))
    mixed = rgb + (1.0 - rgb) * min(0.35 * rank, 0.8)
    return matplotlib.colors.to_hex(mixed)


def speedup_figure(
    df: pd.DataFrame,
    *,
    pairs: Sequence[tuple[Selector, Selector]] | None = None,
    time_col: str = "wall_s",
    claims: pd.DataFrame | None = None,
    length_col: str = "seq_len",
    published_only_lengths: bool = False,
    title: str | None = None,
) -> Figure:
    """Bars of numerator time / denominator time at each L, ours next to the published ratio.

    Args:
        df: result rows; each selector must match exactly one row per L.
        pairs: ``(numerator, denominator)`` selectors, each a sampler name or a mapping of
            column → value including ``sampler`` (e.g. ``{"sampler": "bd3lm", "p_block_size":
            4}``). Default: :func:`default_pairs` (every sampler over ``esolm``).
        time_col: the time column divided (``wall_s``: median; whiskers from ``wall_s_ci_*``:
            the conservative interval ci_lo(num)/ci_hi(den) … ci_hi(num)/ci_lo(den)).
        claims: published ratios (:func:`baselines.load_claims`); the ``derived`` claims whose
            rows match a pair (either way round) are drawn hatched beside ours, whiskers = their
            reproduction band. Published selectors match on ``sampler`` and the selector's
            ``p_*`` keys only.
        length_col: the column holding L.
        published_only_lengths: also show lengths with only a published ratio.
        title: optional axes title.

    Raises:
        PlotError: a column is missing, a selector is ambiguous, or there is nothing to draw.
    """
    require_columns(df, ["sampler", length_col, time_col], "speedup_figure", error=PlotError)
    rows = usable_rows(df, [time_col], error=PlotError)
    pairs = default_pairs(rows) if pairs is None else pairs
    bars = []  # (label, colour, kind, table)
    published_seen: set[str] = set()
    rank: dict[str, int] = {}
    for num_sel, den_sel in pairs:
        num, den = _selector(num_sel), _selector(den_sel)
        label = f"{_sel_label(num)} / {_sel_label(den)}"
        rank[num["sampler"]] = rank.get(num["sampler"], -1) + 1
        color = _shade(style_for(num["sampler"]).color, rank[num["sampler"]])
        ours = _measured_ratios(rows, num, den, time_col, length_col)
        bars += [(label, color, "ours", ours)]
        pub = _published_ratios(claims, num, den)
        if not pub.empty:
            pub_label = f"{_sel_label(pub.attrs['num'])} / {_sel_label(pub.attrs['den'])}"
            if pub_label not in published_seen:  # e.g. both BD3-LM cache modes match one claim
                published_seen.add(pub_label)
                bars += [(pub_label, color, "published", pub)]
    kinds = ("ours", "published") if published_only_lengths else ("ours",)
    lengths = sorted({int(L) for _, _, k, t in bars if k in kinds for L in t["L"]})
    if not lengths:
        raise PlotError("speedup_figure: no length has rows for both sides of any pair.")
    with _paper_style():
        fig, ax = _new_figure((max(6.0, 1.5 * len(lengths) + 4.5), 4.2))
        _draw_bars(ax, bars, lengths)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
        ax.set_xlim(-0.5, len(lengths) - 0.5)
        ax.set_xlabel(label_for(length_col))
        ax.set_ylabel(f"Time ratio, numerator / denominator (×)\n[{time_col}]")
        ratios = [r for *_, t in bars for L, r in zip(t["L"], t["ratio"]) if L in lengths]
        if ratios and max(ratios) / max(min(ratios), 1e-12) > 20:
            ax.set_yscale("log")
        if title:
            ax.set_title(title)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        note = "whiskers: ours = from the CIs of both medians; published = reproduction band"
        ax.text(0.0, -0.2, note, transform=ax.transAxes, fontsize="x-small", va="top")
    return fig


def _draw_bars(ax: Axes, bars: list, lengths: list[int]) -> None:
    width = 0.8 / max(len(bars), 1)
    for i, (label, color, kind, t) in enumerate(bars):
        t = t[t["L"].isin(lengths)]
        if t.empty:
            continue
        xs = np.array([lengths.index(int(L)) for L in t["L"]]) - 0.4 + width * (i + 0.5)
        ratio = t["ratio"].to_numpy(dtype=float)
        err = np.vstack([ratio - t["lo"].to_numpy(float), t["hi"].to_numpy(float) - ratio])
        tag = "ours"
        if kind == "published":
            hw = ", ".join(sorted(set(t["hardware"].dropna())))
            tag = f"published, {hw}" if hw else "published"
        container = ax.bar(
            xs, ratio, width=width * 0.95, yerr=np.clip(err, 0, None), capsize=2,
            color=color if kind == "ours" else "white", edgecolor=color,
            hatch=None if kind == "ours" else "///", lw=1.2, label=f"{label} ({tag})",
        )  # fmt: skip
        noisy = t["noisy"].fillna(False).to_numpy(bool) if "noisy" in t else [False] * len(t)
        for patch, xv, rv, nz in zip(container.patches, xs, ratio, noisy):
            if nz:  # a side was timed under contention, or varied too much: greyed, labelled
                patch.set_facecolor("0.8")
            ax.annotate(
                f"{rv:.3g}×{' noisy' if nz else ''}", (xv, rv), ha="center", va="bottom",
                fontsize="xx-small", rotation=90, xytext=(0, 3), textcoords="offset points",
            )  # fmt: skip


def plot_speedup_vs_length(
    df: pd.DataFrame, out_prefix: str | os.PathLike[str], **kwargs: Any
) -> list[Path]:
    """Draw :func:`speedup_figure` (same keyword arguments) and save it."""
    return save_figure(speedup_figure(df, **kwargs), out_prefix)


# ---------------------------------------------------------------------------------------------
# (d) memory vs L
# ---------------------------------------------------------------------------------------------


def memory_figure(
    df: pd.DataFrame,
    *,
    mem: str = "peak_alloc_gb",
    x: str = "seq_len",
    by: str | Sequence[str] = "sampler",
    logy: bool = False,
    title: str | None = None,
) -> Figure:
    """Peak memory against L, one line per method (log₂ L axis).

    Raises:
        PlotError: a column is missing, or no row has both values.
    """
    keys = _keys(by)
    require_columns(df, [*keys, x, mem], "memory_figure", error=PlotError)
    rows = usable_rows(df, [x, mem], error=PlotError)
    if rows.empty:
        raise PlotError(f"memory_figure: no row has both {x!r} and {mem!r}.")
    with _paper_style():
        fig, ax = _new_figure()
        for label, st, ls, g in _series(rows, keys):
            g = g.sort_values(x)
            ax.plot(g[x], g[mem], ls=ls, marker=st.marker, color=st.color, label=label, ms=6)
        _finish(ax, x, mem, False, logy, title, better=False)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(rows[x].unique()))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    return fig


def plot_memory_vs_length(
    df: pd.DataFrame, out_prefix: str | os.PathLike[str], **kwargs: Any
) -> list[Path]:
    """Draw :func:`memory_figure` (same keyword arguments) and save it."""
    return save_figure(memory_figure(df, **kwargs), out_prefix)


# ---------------------------------------------------------------------------------------------
# The `plot` subcommand
# ---------------------------------------------------------------------------------------------

KINDS = ("frontier", "nfe", "speedup", "memory")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``plot RUN_DIR... [--x X] [--y Y] [--out DIR] [--kind K]`` to ``subparsers``."""
    p = subparsers.add_parser(
        "plot",
        help="draw the frontier, quality-vs-NFE, speed-up and memory figures of result folders",
        description="Draw figures (PNG + PDF) from one or more results/<run_id> folders.",
    )
    p.add_argument("run_dir", nargs="+", help="results/<run_id> folder(s); rows are concatenated")
    p.add_argument(
        "--x", default="s_per_sample", help="frontier time column (default s_per_sample)"
    )
    p.add_argument("--y", default="gen_ppl", help="quality column (default gen_ppl; or mauve)")
    p.add_argument("--out", default=None, help="output folder (default <first RUN_DIR>/plots)")
    p.add_argument("--kind", choices=(*KINDS, "all"), default="all", help="which figure(s)")
    p.add_argument(
        "--by", default="sampler", help="comma-separated method columns (default sampler)"
    )
    p.add_argument(
        "--baselines", default="", help="comma-separated published tables to overlay, e.g. "
        "esolm_t13,esolm_t14,esolm_t15 (see baselines.table_names())",
    )  # fmt: skip
    p.set_defaults(fn=cmd_plot)
    return p


def cmd_plot(args: argparse.Namespace, *, load: Callable[[str], pd.DataFrame] | None = None) -> int:
    """Run the ``plot`` subcommand; ``load`` replaces ``harness.results.load_results`` in tests.

    With ``--kind all`` a figure whose columns the results lack is skipped with a message; a
    figure asked for by name raises instead.

    Raises:
        PlotError: a requested figure cannot be drawn from the rows.
    """
    if load is None:
        from harness.results import load_results as load
    df = pd.concat([load(d) for d in args.run_dir], ignore_index=True)
    out = Path(args.out) if args.out else Path(args.run_dir[0]) / "plots"
    by = [c.strip() for c in args.by.split(",") if c.strip()]
    bl = claims = None
    if args.baselines:
        from baselines import load_baselines

        tables = [t.strip() for t in args.baselines.split(",") if t.strip()]
        bl = pd.concat([load_baselines(t) for t in tables], ignore_index=True)
    if args.kind in ("speedup", "all"):
        from baselines import load_claims

        claims = load_claims()
    y = args.y
    jobs: dict[str, Callable[[], list[Path]]] = {
        "frontier": lambda: plot_frontier(
            df, out / f"frontier_{y}", x=args.x, y=y, by=by, baselines=bl
        ),
        "nfe": lambda: plot_quality_vs_nfe(df, out / f"{y}_vs_nfe", y=y, by=by, baselines=bl),
        "speedup": lambda: plot_speedup_vs_length(df, out / "speedup_vs_length", claims=claims),
        "memory": lambda: plot_memory_vs_length(df, out / "memory_vs_length", by=by),
    }
    for kind in KINDS if args.kind == "all" else (args.kind,):
        try:
            for path in jobs[kind]():
                print(path)
        except PlotError as err:
            if args.kind != "all":
                raise
            print(f"skipped {kind}: {err}")
    return 0
