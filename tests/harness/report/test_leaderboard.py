"""``dlmbench report leaderboard``: AUP ranking from a synthetic run folder, values by hand;
and the accuracy-vs-tokens-per-forward figure."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from harness import cli
from harness.report import leaderboard, taskplots
from harness.report.plots import NOISY_LABEL, PlotError
from harness.results import write_shard

# (sampler, p_schedule, p_policy, task, level, tokens_per_forward, accuracy, tok/s, trust)
A = ("mdlm", "loglinear", "confidence")
B = ("mdlm", "loglinear", "random")
C = ("ar", None, None)  # no schedule or policy: "–"
ROWS = [
    (*A, "add", 1, 1.0, 0.80, 100.0, "ok"),
    (*A, "add", 1, 2.0, 0.78, 200.0, "ok"),
    (*A, "add", 1, 3.0, 0.76, 300.0, "noisy"),  # A's most parallel kept point on add
    (*A, "add", 1, 4.0, 0.70, 400.0, "ok"),  # 70 < 80 − 5: dropped
    (*A, "copy", 1, 1.0, 0.50, 50.0, "ok"),
    (*B, "add", 1, 1.0, 0.90, 120.0, "ok"),
    (*B, "add", 1, 2.0, 0.90, 240.0, "ok"),
    (*C, "add", 1, 1.0, 0.60, 80.0, "ok"),
]
# y_max(add L1) = 0.90 (B), y_max(copy L1) = 0.50 (A).
# A on add: the table of tests/harness/tasks/test_aup.py: 184.775601 (worked out there).
# A on copy: one point, 1·50 = 50.            A's mean: (184.775601 + 50) / 2 = 117.387801
# B on add: W(90) = 1: 1·90 + ½·1·(90 + 90) = 180;  B lacks copy (0): mean 90.
# C on add: one point, 1·60 = 60 (the first term is not weighted); mean 30.
A_ADD = 184.775601


def make_run(tmp_path: Path, rows=ROWS, extra: list[dict] | None = None) -> Path:
    run_dir = tmp_path / "results" / "tasks-1"
    (run_dir / "cells").mkdir(parents=True)
    for i, (s, sch, pol, task, lv, tpf, acc, tps, trust) in enumerate(rows):
        write_shard(
            run_dir,
            {
                "cell_id": f"c{i}", "status": "ok", "sampler": s, "p_schedule": sch,
                "p_policy": pol, "task": task, "level": lv, "accuracy": acc,
                "accuracy_lo": acc - 0.1, "accuracy_hi": min(1.0, acc + 0.1), "n_examples": 32,
                "tokens_per_forward": tpf, "gen_tokens_per_s": tps, "trust": trust,
                "p_num_steps": 64 / tpf,
            },
        )  # fmt: skip
    for j, row in enumerate(extra or []):
        write_shard(run_dir, {"cell_id": f"x{j}", **row})
    return run_dir


def test_ranking_and_values_by_hand(tmp_path: Path):
    failed = {"status": "error", "sampler": "mdlm", "task": "add", "level": 1, "error": "boom"}
    run_dir = make_run(tmp_path, extra=[failed])
    md, csv, table = leaderboard.write_leaderboard(run_dir, plot=False)
    assert list(table["sampler"]) == ["mdlm", "mdlm", "ar"]
    assert list(table["policy"]) == ["confidence", "random", "–"]
    assert list(table["schedule"]) == ["loglinear", "loglinear", "–"]
    assert table["aup"].tolist() == pytest.approx([(A_ADD + 50) / 2, 90.0, 30.0], abs=1e-5)
    assert list(table["rank"]) == [1, 2, 3]
    assert list(table["tasks"]) == ["2/2", "1/2", "1/2"]
    a = table.iloc[0]
    assert a["aup add L1"] == pytest.approx(A_ADD, abs=1e-5) and a["aup copy L1"] == 50.0
    assert math.isnan(table.iloc[1]["aup copy L1"])  # B never ran copy (counted 0 in the mean)
    # speed beside it: A's most parallel kept point is ρ = 3 on add (300 tok/s, noisy), ρ = 1
    # on copy (50 tok/s): mean 175, marked noisy; 1 of A's 5 rows is noisy.
    assert a["tok_s"] == 175.0 and a["tok_s_noisy"] and a["noisy"] == "1/5"
    assert a["tpf_max"] == 2.0 and a["acc_first"] == pytest.approx(0.65)  # (3 + 1) / 2
    written = pd.read_csv(csv)
    assert list(written["aup"]) == pytest.approx(list(table["aup"]))
    assert "method" not in written.columns and "aup add L1" in written.columns
    text = md.read_text()
    assert "## Ranking" in text and "## Every task × level" in text
    assert "| 1 | mdlm | loglinear | confidence | 117 | 2/2 |" in text
    assert "175 (noisy)" in text and "300 (noisy)" in text
    assert "| mdlm | loglinear | confidence | add | 1 | 185 | 3/4 | 0.9 |" in text
    assert not list(run_dir.glob(".tmp-*"))


def test_cli_prints_and_writes_the_report_and_figure(tmp_path: Path, capsys):
    run_dir = make_run(tmp_path)
    assert cli.main(["report", "leaderboard", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Leaderboard: tasks-1") and "plots/accuracy_vs_tpf.png" in out
    assert (run_dir / "leaderboard.md").exists() and (run_dir / "leaderboard.csv").exists()
    png = run_dir / "plots" / "accuracy_vs_tpf.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "plots" / "accuracy_vs_tpf.pdf").read_bytes()[:5] == b"%PDF-"


def test_aup_options_reach_the_computation(tmp_path: Path, capsys):
    run_dir = make_run(tmp_path)
    # offset 20: A's (4, 0.70) is kept too; alpha 0: W = 1, plain trapezoids:
    # 80 + ½(78 + 80) + ½(76 + 78) + ½(70 + 76) = 80 + 79 + 77 + 73 = 309.
    argv = ["report", "leaderboard", str(run_dir), "--alpha", "0", "--y-min-offset", "20"]
    assert cli.main([*argv, "--no-plot"]) == 0
    capsys.readouterr()
    csv = pd.read_csv(run_dir / "leaderboard.csv")
    assert csv.loc[csv["policy"] == "confidence", "aup add L1"].item() == pytest.approx(309.0)
    assert not (run_dir / "plots").exists()


def test_a_run_without_task_rows_is_refused(tmp_path: Path, capsys):
    run_dir = tmp_path / "results" / "plain-1"
    (run_dir / "cells").mkdir(parents=True)
    write_shard(run_dir, {"cell_id": "c0", "status": "ok", "sampler": "mdlm", "wall_s": 1.0})
    assert cli.main(["report", "leaderboard", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "has no task rows" in err and "tasks:" in err
    assert not (run_dir / "leaderboard.md").exists()


# --------------------------------------------------------------------------------------------
# the figure
# --------------------------------------------------------------------------------------------


def frame() -> pd.DataFrame:
    cols = ["sampler", "p_schedule", "p_policy", "task", "level", "tokens_per_forward",
            "accuracy", "gen_tokens_per_s", "trust"]  # fmt: skip
    df = pd.DataFrame(ROWS, columns=cols)
    df["accuracy_lo"], df["accuracy_hi"] = df["accuracy"] - 0.1, df["accuracy"] + 0.05
    df["status"] = "ok"
    return df


def test_figure_has_a_panel_per_task_level_and_a_line_per_method():
    fig = taskplots.accuracy_parallelism_figure(frame())
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["add, level 1", "copy, level 1"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [
        "ar",
        "mdlm (schedule=loglinear, policy=confidence)",
        "mdlm (schedule=loglinear, policy=random)",
        NOISY_LABEL,
    ]
    add = panels[0]
    assert add.get_xscale() == "log"
    line = next(ln for ln in add.get_lines() if list(ln.get_xdata()) == [1.0, 2.0, 3.0, 4.0])
    assert list(line.get_ydata()) == [0.80, 0.78, 0.76, 0.70]  # A's line, sorted by ρ
    grey = [c for c in add.collections if c.get_label() == NOISY_LABEL]
    assert grey and grey[0].get_offsets().tolist() == [[3.0, 0.76]]


def test_figure_refuses_rows_it_cannot_draw():
    with pytest.raises(PlotError, match="'accuracy'"):
        taskplots.accuracy_parallelism_figure(frame().drop(columns=["accuracy"]))
    df = frame()
    df["tokens_per_forward"] = float("nan")
    with pytest.raises(PlotError, match="no row has"):
        taskplots.accuracy_parallelism_figure(df)
