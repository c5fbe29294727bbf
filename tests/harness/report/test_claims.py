"""The claims report: role mapping, ratio CIs, verdicts, and a rendered report for a tiny run."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from baselines import load_claims
from harness.report.claims import bootstrap_ratio_ci, claims_table, role_map, verdicts, write_report
from harness.run.sweep import run_experiment


def test_role_map_identity_then_rank():
    assert role_map([2048, 8192], [2048, 8192, 512]) == {2048: 2048, 8192: 8192}
    assert role_map([2048, 8192], [8192]) == {8192: 8192}
    assert role_map([2048, 8192], [128, 512]) == {2048: 128, 8192: 512}
    assert role_map([2048, 8192], [128]) == {2048: 128, 8192: 128}
    assert role_map([1024], []) == {}


def test_bootstrap_ratio_ci_brackets_the_ratio_of_medians():
    rng = np.random.default_rng(0)
    num = list(10 + rng.normal(0, 0.1, 20))
    den = list(2 + rng.normal(0, 0.02, 20))
    lo, hi = bootstrap_ratio_ci(num, den)
    r = np.median(num) / np.median(den)
    assert lo < r < hi and hi - lo < 0.2
    assert all(math.isnan(v) for v in bootstrap_ratio_ci([1.0], [1.0]))


def test_verdicts_use_the_20_percent_band_and_the_published_band():
    v = verdicts(
        {
            "measured": 11.9,
            "predicted_here": 10.0,
            "predicted_paper": 14.0,
            "band_lo": 11.0,
            "band_hi": 17.2,
        }
    )
    assert v == {"model_here": "explained (+19%)", "model_paper": "reproduced"}
    v = verdicts(
        {
            "measured": 12.5,
            "predicted_here": 10.0,
            "predicted_paper": 1.0,
            "band_lo": 11.0,
            "band_hi": 17.2,
        }
    )
    assert v["model_here"].startswith("unexplained") and v["model_paper"] == "not reproduced"
    assert verdicts({})["model_here"] == "n/a"


@pytest.fixture(scope="module")
def tiny_table11(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("claims")
    cfg = yaml.safe_load(open("configs/paper/table11_cpu.yaml"))
    cfg["checkpoints"] = {"tiny": {"path": "random:tiny", "vocab_size": 64}}
    cfg["seq_lens"] = [16, 32]
    cfg["timing"] = {"mode": "profile", "repeats": 2, "warmup": 0}
    cfg["output_dir"] = str(tmp)
    path = tmp / "t11.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return run_experiment(path, progress=False)


@pytest.fixture(scope="module")
def table(tiny_table11):
    return claims_table(tiny_table11, allow_noisy=True)  # tiny cells: trust is not the point


def test_report_lists_every_published_claim(table):
    assert set(table["claim_id"]) == set(load_claims()["claim_id"])
    ok = table[table["status"] == "ok"]
    # Table 11 claims are measured: L 2048 → 16, 8192 → 32 by rank; BD3-LM once per cache.
    row = ok[ok["claim_id"] == "t11_mdlm_over_esolm_L2048"].iloc[0]
    assert row["mapping"].startswith("L 2048→16")
    bd3 = ok[ok["claim_id"] == "t11_bd3lm_bs4_over_esolm_L8192"]
    assert sorted(bd3["variant"]) == ["efficient", "reference"]
    for col in ("measured", "predicted_here", "predicted_paper", "paper_tflops_num"):
        assert np.isfinite(ok[col].astype(float)).all(), col
    # The published MDLM times imply ≈ 6.7 TFLOP/s on the A6000 (published-numbers.md §8).
    assert row["paper_tflops_num"] == pytest.approx(6.7, rel=0.05)
    # Batch-512 claims have no cell in a batch-1 run: listed, not dropped.
    b512 = table[table["claim_id"].str.startswith("b512")]
    assert len(b512) and (b512["status"].str.startswith("not measured")).all()


def test_measured_ratio_is_the_ratio_of_median_wall_times(tiny_table11, table):
    from harness.results import load_results

    df = load_results(tiny_table11)
    row = table[table["claim_id"] == "t11_esolm_over_ar_L8192"].iloc[0]
    esolm = df[(df["sampler"] == "esolm") & (df["seq_len"] == 32)]["wall_s"].item()
    ar = df[(df["sampler"] == "ar") & (df["seq_len"] == 32)]["wall_s"].item()
    assert row["measured"] == pytest.approx(esolm / ar)


def test_write_report_renders_markdown_and_csv(tiny_table11, tmp_path):
    md, csv = write_report(tiny_table11, tmp_path)
    text = md.read_text()
    assert text.startswith("# Claims report") and "t11_mdlm_over_esolm_L8192" in text
    assert len(pd.read_csv(csv)) >= len(load_claims())


def test_a_one_token_per_call_bd3lm_claim_ignores_ancestral_throughput_cells():
    """Table 11 timed BD3-LM at T′ = 5000 ≥ L′ (NFE = L); a Table 13-style ancestral cell with
    T′ = 1 < L′ = 4 is another workload and must not be matched to it."""
    from harness.report.claims import _matches

    claim = {"p_block_size": 4, "p_steps_per_block": 5000, "p_top_p": 1}

    def row(**params):
        return pd.Series({"sampler": "bd3lm", "cell_config": json.dumps({"params": params})})

    assert _matches(row(block_size=4, steps_per_block=16, mode="first_hitting"), "bd3lm", claim)
    assert _matches(row(block_size=4, steps_per_block=4, mode="ancestral"), "bd3lm", claim)
    assert not _matches(row(block_size=4, steps_per_block=1, mode="ancestral"), "bd3lm", claim)
    other = row(block_size=16, steps_per_block=16, mode="first_hitting")
    assert not _matches(other, "bd3lm", claim)


def test_latency_claims_are_not_mapped_onto_a_large_batch_run(tmp_path):
    """Table 11 is batch-1 latency; a throughput run at batch 2 has no batch-1 cells, and rank
    mapping must not pair the two regimes (the batch-512 claims may use it instead)."""
    cfg = yaml.safe_load(open("configs/paper/table11_cpu.yaml"))
    cfg["checkpoints"] = {"tiny": {"path": "random:tiny", "vocab_size": 64}}
    cfg["samplers"] = [s for s in cfg["samplers"] if s["sampler"] in ("esolm", "ar")]
    cfg.update(seq_lens=[16], batch_sizes=[2], output_dir=str(tmp_path))
    cfg["timing"] = {"mode": "profile", "repeats": 2, "warmup": 0}
    path = tmp_path / "b2.yaml"
    path.write_text(yaml.safe_dump(cfg))
    table = claims_table(run_experiment(path, progress=False), allow_noisy=True)
    t11 = table[table["claim_id"] == "t11_esolm_over_ar_L2048"].iloc[0]
    assert t11["status"] == "not measured: other regime (paper batch 1, this run's batch 2)"


def test_a_noisy_cell_keeps_its_numbers_but_gets_no_verdict():
    """Issue 14: the claims report refuses to judge a ratio built on a noisy timing."""
    import pandas as pd

    from harness.report.claims import withhold_noisy

    r = {"measured": 4.0, "model_here": "explained (+1%)", "model_paper": "reproduced",
         "status": "ok"}  # fmt: skip
    ok = pd.DataFrame({"trust": ["ok"], "trust_reason": [None]})
    noisy = pd.DataFrame({"trust": ["noisy"], "trust_reason": ["contention: 0.9; high CV: 30%"]})
    out = withhold_noisy(r, ok, noisy)
    assert out["measured"] == 4.0 and out["model_here"] == out["model_paper"] == "not judged"
    assert out["status"].startswith("noisy (contention, high CV)")
    assert withhold_noisy(r, ok, ok) == r
