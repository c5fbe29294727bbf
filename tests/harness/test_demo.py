"""``dlmbench demo`` end to end on the shipped checkpoints, shrunk to seconds (L = 32, b = 2)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_demo(tmp_path: Path, monkeypatch) -> list[str]:
    monkeypatch.chdir(ROOT)  # the demo config names checkpoints/ relative to the checkout
    return [
        "demo", "seq_lens=[32]", "batch_sizes=[2]", "timing.repeats=1", "timing.warmup=0",
        # the pipeline is under test here, not the trust verdict: judge no row noisy
        "timing.min_trusted_repeats=1", "timing.max_cv=100", "timing.max_other_cores=100",
        f"output_dir={tmp_path}",
    ]  # fmt: skip


def test_demo_runs_scores_plots_and_reports(small_demo, tmp_path: Path, capsys):
    assert cli.main(small_demo) == 0
    out = capsys.readouterr().out
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("demo-")]
    for name in ("frontier.png", "frontier.pdf", "gen_ppl_vs_nfe.png"):
        assert (run_dir / "plots" / name).stat().st_size > 1000
    assert (run_dir / "matched.md").read_text().startswith("# Speed-ups at matched quality")
    lines = [ln.split() for ln in out.splitlines()]
    rows = [ln for ln in lines if ln and ln[0] in {"mdlm", "bd3lm", "esolm", "ar"}]
    assert len(rows) == 17  # every cell of configs/demo.yaml, each with a finite Gen PPL
    for ln in rows:  # ... Gen PPL, entropy, trust
        assert math.isfinite(float(ln[-3])) and float(ln[-3]) > 1, ln
        assert ln[-1] == "ok", ln
    assert f"results: {run_dir}" in out and "report:" in out
