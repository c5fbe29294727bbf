"""Figures render from small hand-made result rows; styles are stable; bad input is named.

Oracles: hand-computed ratios and frontier points; the fixed palette; PNG / PDF magic bytes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest

from baselines import load_baselines, load_claims
from harness.report import plots
from harness.report.plots import PALETTE, PlotError, Style, style_for

ROOT = Path(__file__).resolve().parents[3]


def results(lengths=(2048, 8192)) -> pd.DataFrame:
    """Result rows in the design.md columns: 4 methods (bd3lm at two block sizes) × L × T."""
    base = {("esolm", None): 2.0, ("mdlm", None): 20.0, ("ar", None): 1.0,
            ("bd3lm", 4): 6.0, ("bd3lm", 16): 5.0}  # fmt: skip
    rows = []
    for (s, bs), t0 in base.items():
        for L in lengths:
            for T, ppl in ((16, 100.0), (64, 50.0), (256, 40.0)):
                wall = t0 * (L / lengths[0]) * T / 16
                rows.append(dict(
                    run_id="r", cell_id=f"{s}{bs}{L}{T}", status="ok", sampler=s, p_block_size=bs,
                    p_num_steps=T, seq_len=L, batch_size=4, wall_s=wall, wall_s_ci_lo=0.9 * wall,
                    wall_s_ci_hi=1.2 * wall, s_per_sample=wall / 4, gen_ppl=ppl, mauve=0.5,
                    nfe_total=T, peak_alloc_gb=0.001 * L,
                ))  # fmt: skip
    return pd.DataFrame(rows)


def hexcolor(c) -> str:
    return mcolors.to_hex(c).upper()


def legend_colors(fig) -> dict[str, str]:
    """Legend label → colour of its handle (line, errorbar, scatter)."""
    ax = fig.axes[0]
    out = {}
    for h, label in zip(*ax.get_legend_handles_labels()):
        if hasattr(h, "lines"):  # ErrorbarContainer
            h = h.lines[0]
        if hasattr(h, "get_color") and not hasattr(h, "get_edgecolor"):
            out[label] = hexcolor(h.get_color())
        else:
            out[label] = hexcolor(h.get_edgecolor()[0])
    return out


def assert_files(paths: list[Path], prefix: Path) -> None:
    assert paths == [prefix.with_name(prefix.name + ".png"), prefix.with_name(prefix.name + ".pdf")]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[0].stat().st_size > 5000
    assert paths[1].read_bytes()[:5] == b"%PDF-" and paths[1].stat().st_size > 2000
    assert not list(prefix.parent.glob("*.tmp"))  # atomic: no temporary left behind


# ---------------------------------------------------------------------------------------------
# Every figure renders and saves
# ---------------------------------------------------------------------------------------------


def test_each_figure_writes_png_and_pdf(tmp_path: Path):
    df = results()
    d1 = df[df.seq_len == 2048]
    bl = pd.concat([load_baselines(t) for t in ("esolm_t13", "esolm_t14", "esolm_t15")])
    p = tmp_path / "figs" / "frontier"
    assert_files(plots.plot_frontier(d1, p, by=["sampler", "p_block_size"], baselines=bl), p)
    p = tmp_path / "figs" / "nfe"
    assert_files(plots.plot_quality_vs_nfe(d1, p, by=["sampler", "p_block_size"], baselines=bl), p)
    p = tmp_path / "figs" / "speedup"
    d2 = df[df.p_num_steps == 256]
    assert_files(plots.plot_speedup_vs_length(d2, p, claims=load_claims()), p)
    p = tmp_path / "figs" / "memory"
    assert_files(plots.plot_memory_vs_length(d2, p, by=["sampler", "p_block_size"]), p)


# ---------------------------------------------------------------------------------------------
# Styles
# ---------------------------------------------------------------------------------------------


def test_palette_is_fixed_and_used_by_every_figure():
    assert style_for("esolm") == Style("#0173B2", "o") and style_for("mdlm") == Style(
        "#DE8F05", "s"
    )
    assert style_for("bd3lm") == Style("#029E73", "^") and style_for("ar") == Style("#404040", "X")
    d = results()
    d1, d2 = d[d.seq_len == 2048], d[d.p_num_steps == 256]
    figs = [
        plots.frontier_figure(d1),
        plots.quality_vs_nfe_figure(d1),
        plots.memory_figure(d2),
    ]
    for fig in figs:
        colors = legend_colors(fig)
        for s in ("esolm", "mdlm", "bd3lm", "ar"):
            assert colors[s] == style_for(s).color, (fig, s)
    bars = plots.speedup_figure(d2)
    labels = {c.get_label(): hexcolor(c.patches[0].get_facecolor()) for c in bars.axes[0].containers
              if hasattr(c, "patches")}  # fmt: skip
    assert labels["mdlm / esolm (ours)"] == style_for("mdlm").color


def test_unknown_sampler_styles_are_deterministic_across_processes():
    """A hash-salted fallback (hash()) would differ in a process with another PYTHONHASHSEED."""
    st = style_for("my_new_sampler")
    assert st == style_for("my_new_sampler")
    assert st.color not in {s.color for s in PALETTE.values()}
    code = (
        "from harness.report.plots import style_for as f; s = f('my_new_sampler'); "
        "print(s.color, s.marker)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert r.stdout.strip() == f"{st.color} {st.marker}"


# ---------------------------------------------------------------------------------------------
# What is drawn
# ---------------------------------------------------------------------------------------------


def test_frontier_hull_skips_dominated_points_and_errors_come_from_the_ci():
    df = pd.DataFrame({
        "sampler": "esolm", "wall_s": [4.0, 8.0, 12.0, 16.0], "gen_ppl": [80.0, 40.0, 60.0, 30.0],
        "wall_s_ci_lo": [3.0, 7.0, 11.0, 15.0], "wall_s_ci_hi": [6.0, 9.0, 13.0, 18.0],
        "batch_size": 4,
    })  # fmt: skip
    df["s_per_sample"] = df["wall_s"] / 4
    fig = plots.frontier_figure(df)
    ax = fig.axes[0]
    hull = [ln for ln in ax.get_lines() if ln.get_linestyle() != "None"]
    assert len(hull) == 1  # (12 s, 60) is dominated by (8 s, 40): not on the hull
    assert list(hull[0].get_xdata()) == [1.0, 2.0, 4.0] and list(hull[0].get_ydata()) == [
        80,
        40,
        30,
    ]
    (container,) = ax.containers
    segs = container.lines[2][0].get_segments()  # horizontal error bars, per point
    got = [(s[0][0], s[1][0]) for s in segs]
    assert got == [(0.75, 1.5), (1.75, 2.25), (2.75, 3.25), (3.75, 4.5)]  # CI / batch_size


def test_noisy_rows_are_greyed_on_the_frontier():
    """Issue 14: points whose timing is noisy are marked, and only those."""
    df = pd.DataFrame({
        "sampler": "esolm", "s_per_sample": [1.0, 2.0, 4.0], "gen_ppl": [80.0, 40.0, 30.0],
        "trust": ["ok", "noisy", "ok"],
    })  # fmt: skip
    ax = plots.frontier_figure(df).axes[0]
    grey = [c for c in ax.collections if c.get_label() == plots.NOISY_LABEL]
    assert len(grey) == 1 and grey[0].get_offsets().tolist() == [[2.0, 40.0]]
    ax = plots.frontier_figure(df.assign(trust="ok")).axes[0]
    assert not [c for c in ax.collections if c.get_label() == plots.NOISY_LABEL]


def bar_heights(fig) -> dict[str, list[float]]:
    return {c.get_label(): [p.get_height() for p in c.patches] for c in fig.axes[0].containers
            if hasattr(c, "patches")}  # fmt: skip


def test_speedup_bars_hold_measured_and_published_ratios():
    d = results()
    fig = plots.speedup_figure(d[d.p_num_steps == 256], claims=load_claims())
    h = bar_heights(fig)
    # ours: mdlm 20·(L/2048)·16 over esolm 2·(L/2048)·16 = 10 at both lengths
    assert h["mdlm / esolm (ours)"] == pytest.approx([10.0, 10.0])
    assert h["bd3lm (block_size=4) / esolm (ours)"] == pytest.approx([3.0, 3.0])
    assert h["bd3lm (block_size=16) / esolm (ours)"] == pytest.approx([2.5, 2.5])
    assert h["ar / esolm (ours)"] == pytest.approx([0.5, 0.5])
    # published, Table 11 (A6000): the claims file's ratios; AR's is stated as Eso-LM / AR
    assert h["mdlm / esolm (published, A6000)"] == [13.8, 66.2]
    assert h["bd3lm (block_size=4) / esolm (published, A6000)"] == [1.66, 3.80]
    assert h["bd3lm (block_size=16) / esolm (published, A6000)"] == [1.46, 3.27]
    assert h["ar / esolm (published, A6000)"] == pytest.approx([1 / 1.10, 1 / 1.52])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["2048", "8192"]


def test_speedup_bars_of_noisy_cells_are_greyed_and_labelled():
    """Issue 14: a ratio with a noisy side is marked on the speed-up bars, the others are not."""
    d = results()
    d = d[d.p_num_steps == 256].assign(trust="ok")
    d.loc[(d.sampler == "mdlm") & (d.seq_len == 8192), "trust"] = "noisy"
    ax = plots.speedup_figure(d).axes[0]
    mdlm = next(c for c in ax.containers if c.get_label() == "mdlm / esolm (ours)")
    assert [hexcolor(p.get_facecolor()) for p in mdlm.patches][1] == "#CCCCCC"
    assert hexcolor(mdlm.patches[0].get_facecolor()) == style_for("mdlm").color
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("10× noisy") == 1


def test_speedup_splits_by_every_varying_parameter_and_draws_a_claim_once():
    d = results()
    d = d[d.p_num_steps == 256].assign(p_cache=None)
    bd3 = d[d.sampler == "bd3lm"]
    d = pd.concat([
        d[d.sampler != "bd3lm"], bd3.assign(p_cache="reference"),
        bd3.assign(p_cache="efficient", wall_s=bd3.wall_s / 2, wall_s_ci_lo=bd3.wall_s_ci_lo / 2,
                   wall_s_ci_hi=bd3.wall_s_ci_hi / 2),
    ])  # fmt: skip
    pairs = plots.default_pairs(d)
    assert ({"sampler": "bd3lm", "p_block_size": 4, "p_cache": "efficient"}, "esolm") in pairs
    assert len(pairs) == 2 + 4  # ar, mdlm, bd3lm × {4, 16} × {efficient, reference}
    h = bar_heights(plots.speedup_figure(d, claims=load_claims()))
    assert h["bd3lm (block_size=4, cache=reference) / esolm (ours)"] == pytest.approx([3.0, 3.0])
    assert h["bd3lm (block_size=4, cache=efficient) / esolm (ours)"] == pytest.approx([1.5, 1.5])
    # The paper names no cache mode: its bars are drawn once per block size, labelled without it.
    assert h["bd3lm (block_size=4) / esolm (published, A6000)"] == [1.66, 3.80]
    assert sum("published" in k and "bd3lm" in k for k in h) == 2


def test_speedup_whiskers_are_the_conservative_ci_ratio():
    d = results()
    fig = plots.speedup_figure(d[d.p_num_steps == 256], pairs=[("mdlm", "esolm")])
    (bars,) = [c for c in fig.axes[0].containers if c.get_label() == "mdlm / esolm (ours)"]
    seg = bars.errorbar.lines[2][0].get_segments()[0]
    lo, hi = sorted([seg[0][1], seg[1][1]])
    assert lo == pytest.approx(10 * 0.9 / 1.2) and hi == pytest.approx(10 * 1.2 / 0.9)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_missing_columns_are_named():
    d = results()
    with pytest.raises(PlotError) as err:
        plots.frontier_figure(d.drop(columns=["gen_ppl", "s_per_sample"]))
    msg = str(err.value)
    assert "frontier_figure needs column(s) 's_per_sample', 'gen_ppl'" in msg and "Present:" in msg
    with pytest.raises(PlotError, match="memory_figure needs column\\(s\\) 'peak_alloc_gb'"):
        plots.plot_memory_vs_length(d.drop(columns=["peak_alloc_gb"]), "unused")
    with pytest.raises(PlotError, match="speedup_figure needs column\\(s\\) 'seq_len'"):
        plots.speedup_figure(d.drop(columns=["seq_len"]))
    with pytest.raises(PlotError, match="quality_vs_nfe_figure needs column\\(s\\) 'nfe_total'"):
        plots.quality_vs_nfe_figure(d.drop(columns=["nfe_total"]))


def test_ambiguous_selection_and_empty_input_are_clear_errors():
    d = results()
    with pytest.raises(PlotError) as err:
        plots.speedup_figure(d, pairs=[("mdlm", "esolm")])  # 3 values of p_num_steps per L
    assert "3 rows match {'sampler': 'mdlm'} at seq_len=2048" in str(err.value)
    with pytest.raises(PlotError, match="no 'esolm' rows to divide by"):
        plots.speedup_figure(d[d.sampler != "esolm"])
    with pytest.raises(PlotError, match="no row has both"):
        plots.frontier_figure(d.assign(gen_ppl=np.nan))


# ---------------------------------------------------------------------------------------------
# The plot subcommand
# ---------------------------------------------------------------------------------------------


def test_plot_subcommand_with_an_injected_loader(tmp_path: Path, capsys):
    parser = argparse.ArgumentParser(prog="dlmbench")
    sub = parser.add_subparsers(dest="command", required=True)
    plots.add_parser(sub)
    out = tmp_path / "out"
    args = parser.parse_args(
        ["plot", "results/run1", "--out", str(out), "--by", "sampler,p_block_size"]
    )
    assert args.fn is plots.cmd_plot and args.x == "s_per_sample" and args.y == "gen_ppl"
    d = results()
    seen = []

    def fake_load(run_dir: str) -> pd.DataFrame:
        seen.append(run_dir)
        return d[d.p_num_steps == 256].drop(columns=["peak_alloc_gb"])

    assert args.fn(args, load=fake_load) == 0
    printed = capsys.readouterr().out
    assert seen == ["results/run1"]
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "frontier_gen_ppl.pdf", "frontier_gen_ppl.png", "gen_ppl_vs_nfe.pdf", "gen_ppl_vs_nfe.png",
        "speedup_vs_length.pdf", "speedup_vs_length.png",
    ]  # fmt: skip
    assert "skipped memory: memory_figure needs column(s) 'peak_alloc_gb'" in printed
    args = parser.parse_args(["plot", "results/run1", "--out", str(out), "--kind", "memory"])
    with pytest.raises(PlotError, match="peak_alloc_gb"):
        args.fn(args, load=fake_load)
