"""``dlmbench report matched``: speed-ups at matched quality, on hand-made scored rows."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from harness import cli
from harness.report import matched


def scored(rows: list[tuple[str, float, float, float]]) -> pd.DataFrame:
    """(sampler, p_num_steps, s_per_sample, gen_ppl) rows, all ok."""
    return pd.DataFrame(
        [
            {"sampler": s, "p_num_steps": t, "s_per_sample": x, "gen_ppl": y, "status": "ok",
             "nfe_total": t, "cell_id": f"{s}{t}"}
            for s, t, x, y in rows
        ]
    )  # fmt: skip


# Method A: the module docstring's worked example of report.frontier (front (1, 100), (2, 50),
# (4, 25)); method B twice as fast at every quality; method C better than anything A reaches.
ROWS = [
    ("a", 1, 1.0, 100.0), ("a", 2, 2.0, 50.0), ("a", 3, 3.0, 60.0), ("a", 4, 4.0, 25.0),
    ("b", 1, 0.5, 100.0), ("b", 2, 1.0, 50.0), ("b", 4, 2.0, 25.0),
    ("c", 1, 0.25, 20.0), ("c", 2, 0.5, 10.0),
]  # fmt: skip


@pytest.fixture
def fake_run(tmp_path: Path, monkeypatch) -> Path:
    run_dir = tmp_path / "results" / "r-1"
    run_dir.mkdir(parents=True)
    frame = scored(ROWS)
    monkeypatch.setattr(matched, "resolve_run", lambda spec: run_dir)
    monkeypatch.setattr(matched, "load_results", lambda d: frame.copy())
    return run_dir


def test_ratios_at_matched_quality_and_the_dominance_bound(fake_run: Path):
    md, csv, summ = matched.write_matched_report("r-1", n_levels=3)
    s = summ.set_index(["method_a", "method_b"])
    # b takes half of a's time at every common quality (100 … 25): ratio a/b = 2 exactly.
    assert s.loc[("a", "b"), "ratio_min"] == pytest.approx(2.0)
    assert s.loc[("a", "b"), "ratio_max"] == pytest.approx(2.0)
    assert s.loc[("a", "b"), "levels"] == 3
    # c's fastest point (0.25 s, 20) beats a's best (4 s, 25): time a / time c ≥ 16.
    assert math.isnan(s.loc[("a", "c"), "ratio_min"])
    assert s.loc[("a", "c"), "bound"].startswith("time a / time c ≥ 16:")
    assert s.loc[("b", "c"), "bound"].startswith("time b / time c ≥ 8:")
    levels = pd.read_csv(csv)
    ab = levels[(levels.method_a == "a") & (levels.method_b == "b")]
    assert list(ab["gen_ppl"]) == pytest.approx([25.0, 50.0, 100.0])
    assert list(ab["s_per_sample_a"]) == pytest.approx([4.0, 2.0, 1.0])
    text = md.read_text()
    assert "## Summary" in text and "## Pareto fronts" in text
    assert "| a | 3 |" not in text  # (3 s, 60) is dominated: not on a's front
    assert not list(fake_run.glob("*.tmp"))


def test_a_run_without_quality_is_refused_with_the_command_to_score_it(
    tmp_path: Path, monkeypatch, capsys
):
    run_dir = tmp_path / "results" / "r-2"
    run_dir.mkdir(parents=True)
    frame = scored(ROWS).drop(columns=["gen_ppl"])
    monkeypatch.setattr(matched, "resolve_run", lambda spec: run_dir)
    monkeypatch.setattr(matched, "load_results", lambda d: frame)
    assert cli.main(["report", "matched", "r-2"]) == 2
    err = capsys.readouterr().err
    assert "no 'gen_ppl' values" in err and "dlmbench quality" in err
    assert not list(run_dir.iterdir())  # nothing written


def test_one_method_is_not_a_comparison(tmp_path: Path, monkeypatch, capsys):
    run_dir = tmp_path / "results" / "r-3"
    run_dir.mkdir(parents=True)
    frame = scored([r for r in ROWS if r[0] == "a"])
    monkeypatch.setattr(matched, "resolve_run", lambda spec: run_dir)
    monkeypatch.setattr(matched, "load_results", lambda d: frame)
    assert cli.main(["report", "matched", "r-3"]) == 2
    assert "needs two" in capsys.readouterr().err


def test_methods_split_by_a_parameter():
    df = scored(ROWS)
    labels = matched.method_column(df, "sampler,p_num_steps")
    assert labels.iloc[0] == "a (num_steps=1)"
    assert list(matched.method_column(df, "sampler")[:2]) == ["a", "a"]


def test_noisy_rows_are_left_out_unless_allowed(tmp_path: Path, monkeypatch):
    """Issue 14: a row timed under contention does not enter a speed-up unless asked to."""
    run_dir = tmp_path / "results" / "r-1"
    run_dir.mkdir(parents=True)
    frame = scored(ROWS)
    # b's fastest point, timed under contention, would otherwise make b look 2x faster than a
    frame["trust"] = ["ok"] * len(frame)
    frame["trust_reason"] = None
    slow_b = (frame.sampler == "b") & (frame.p_num_steps == 1)
    frame.loc[slow_b, ["trust", "trust_reason"]] = ["noisy", "contention: 0.9 cores"]
    monkeypatch.setattr(matched, "resolve_run", lambda spec: run_dir)
    monkeypatch.setattr(matched, "load_results", lambda d: frame.copy())
    text = matched.write_matched_report("r-1", n_levels=3)[0].read_text()
    assert "1 row(s) whose timing is noisy" in text and "b spans [25, 50]" in text
    text = matched.write_matched_report("r-1", n_levels=3, allow_noisy=True)[0].read_text()
    assert "noisy" not in text and "b spans [25, 100]" in text
