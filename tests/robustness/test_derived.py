"""Derived numbers, each checked against an independent computation (issue 11 §4).

Every test names the finding it guards. Each is built so that computing the quantity the wrong
way round, from the wrong statistic, or from the measured value itself makes it fail.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import harness.measure.costmodel as cm
import harness.report.claims as claims
from baselines import load_baselines, load_hardware
from harness.run.runner import energy_columns
from harness.run.timing import Measurement
from samplers.bd3lm_block import BD3LMConfig, commit
from samplers.schedules import POLICIES
from tests.conftest import tiny_model

# ---------------------------------------------------------------------------------------------
# Claims report: pairing of cells, measured ratio, CI, predicted columns, NFE check
# ---------------------------------------------------------------------------------------------

_BASE = {"batch_size": 1, "status": "ok", "model_size": "cpu-s", "dtype": "float32"}


def _cell(sampler, family, L, walls, predicted, nfe=None, **params):
    row = {
        **_BASE,
        "sampler": sampler,
        "family": family,
        "seq_len": L,
        "wall_s_all": list(walls),
        "wall_s": float(np.mean(walls)),  # deliberately the mean: the report must not use it
        "predicted_s": predicted,
        "cell_config": json.dumps({"sampler": sampler, "params": params}),
        "nfe_total": nfe if nfe is not None else math.nan,
        "nfe_expected": nfe if nfe is not None else math.nan,
    }
    row.update({f"p_{k}": v for k, v in params.items()})
    return row


def _table(monkeypatch, rows, claim_ids):
    df = pd.DataFrame(rows)
    monkeypatch.setattr(claims, "resolve_run", lambda run: run)
    monkeypatch.setattr(claims, "load_results", lambda run_dir: df)
    out = claims.claims_table("synthetic")
    return out[out["claim_id"].isin(claim_ids)]


ESO = {"num_steps": 1000000, "alpha0_eval": 1.0}
MDLM = {"num_steps": 1000000}


def _bd3(L, bs, cache, walls, predicted, nfe=None):
    return _cell(
        "bd3lm", "bd3lm", L, walls, predicted, nfe,
        block_size=bs, cache=cache, mode="first_hitting",
    )  # fmt: skip


def test_bd3lm_cache_variants_are_paired_not_divided_by_the_first_denominator(monkeypatch):
    """Finding: the denominator always took its first cache variant, so the shipped report's
    'efficient' BD3-LM L′ = 4 / L′ = 16 row divided an efficient cell by a reference one."""
    rows = [
        _bd3(512, 4, "reference", [4.0] * 3, 4.0),
        _bd3(512, 4, "efficient", [1.0] * 3, 1.0),
        _bd3(512, 16, "reference", [2.0] * 3, 2.0),
        _bd3(512, 16, "efficient", [0.5] * 3, 0.5),
        _bd3(128, 4, "reference", [1.0] * 3, 1.0),
        _bd3(128, 16, "efficient", [1.0] * 3, 1.0),
    ]
    t = _table(
        monkeypatch, rows, {"t11_bd3lm_bs4_over_bs16_L8192", "t11_bd3lm_bs4_over_bs16_L2048"}
    )
    hi = t[t["claim_id"] == "t11_bd3lm_bs4_over_bs16_L8192"].set_index("variant")
    assert sorted(hi.index) == ["efficient", "reference"]
    assert hi.loc["efficient", "measured"] == pytest.approx(2.0)  # 1.0 / 0.5, not 1.0 / 2.0
    assert hi.loc["reference", "measured"] == pytest.approx(2.0)
    # A variant present on one side only is reported unpaired, never divided.
    lo = t[t["claim_id"] == "t11_bd3lm_bs4_over_bs16_L2048"].set_index("variant")
    assert lo.loc["reference", "status"].startswith("unpaired")
    assert lo.loc["efficient", "status"].startswith("unpaired")
    assert lo["measured"].isna().all()


def test_an_uncached_esolm_cell_listed_first_is_its_own_labelled_variant(monkeypatch):
    """Finding: parameters the paper row does not map (kv_cache) were not matched, so an
    uncached Eso-LM row listed first turned MDLM / Eso-LM 20× into 6.7×."""
    rows = [
        _cell("mdlm", "mdlm", 512, [20.0] * 3, 20.0, **MDLM),
        _cell("esolm", "esolm", 512, [3.0] * 3, 3.0, **ESO, kv_cache=False),
        _cell("esolm", "esolm", 512, [1.0] * 3, 1.0, **ESO, kv_cache=True),
        _cell("mdlm", "mdlm", 128, [2.0] * 3, 2.0, **MDLM),
        _cell("esolm", "esolm", 128, [1.0] * 3, 1.0, **ESO, kv_cache=True),
    ]
    t = _table(monkeypatch, rows, {"t11_mdlm_over_esolm_L8192"}).set_index("variant")
    assert t.loc["den kv_cache=True", "measured"] == pytest.approx(20.0)
    assert t.loc["den kv_cache=False", "measured"] == pytest.approx(20.0 / 3.0)
    assert (t["status"] == "ok").all()


def test_measured_ratio_and_ci_come_from_medians_of_every_repeat_num_over_den(monkeypatch):
    """Finding: the measured ratio and its CI must be median(num repeats) / median(den repeats),
    with a CI only at ≥ 3 repeats per cell; an outlier must not move them (a mean would)."""
    rng = np.random.default_rng(0)
    num = list(6.0 + rng.normal(0, 0.01, 20)) + [600.0]  # one outlier: mean ≈ 34, median ≈ 6
    den = list(2.0 + rng.normal(0, 0.01, 21))
    rows = [
        _cell("mdlm", "mdlm", 512, num, 5.0, **MDLM),
        _cell("esolm", "esolm", 512, den, 2.5, **ESO),
        _cell("mdlm", "mdlm", 128, [3.0, 3.1], 1.0, **MDLM),  # two repeats: no CI
        _cell("esolm", "esolm", 128, [1.0, 1.1, 1.2], 1.0, **ESO),
    ]
    t = _table(monkeypatch, rows, {"t11_mdlm_over_esolm_L8192", "t11_mdlm_over_esolm_L2048"})
    hi = t[t["claim_id"] == "t11_mdlm_over_esolm_L8192"].iloc[0]
    want = np.median(num) / np.median(den)
    assert hi["measured"] == pytest.approx(want, rel=1e-12)
    assert hi["ci_lo"] <= want <= hi["ci_hi"] and hi["ci_hi"] - hi["ci_lo"] < 0.05
    assert hi["ci_note"] == ""
    # predicted_here is the cost model's ratio, not the measured one (and not den / num).
    assert hi["predicted_here"] == pytest.approx(5.0 / 2.5)
    lo = t[t["claim_id"] == "t11_mdlm_over_esolm_L2048"].iloc[0]
    assert math.isnan(lo["ci_lo"]) and math.isnan(lo["ci_hi"]) and lo["ci_note"] == "n<3, no CI"
    assert lo["measured"] == pytest.approx(3.05 / 1.1)


def test_bootstrap_ratio_ci_is_of_medians_and_flips_with_the_sides():
    """Finding: a ratio CI must bracket its point estimate, come from medians (not means), and
    swapping numerator and denominator must give the reciprocal interval."""
    num = [5.0] * 10 + [50.0] * 3  # median 5, mean ≈ 15
    den = [1.0, 1.0, 1.0, 1.01, 0.99, 1.0, 1.0]
    lo, hi = claims.bootstrap_ratio_ci(num, den)
    assert lo <= 5.0 <= hi and hi < 10.0  # a mean-based interval would sit near 15
    rlo, rhi = claims.bootstrap_ratio_ci(den, num)
    assert rlo == pytest.approx(1 / hi, rel=0.02) and rhi == pytest.approx(1 / lo, rel=0.02)


def test_nfe_is_compared_per_token_with_the_papers_where_it_is_stated(monkeypatch):
    """Finding: the report never checked that our cells do the paper's work; NFE/L is compared
    with the published NFE/L of each side (BD3-LM L′ = 4 stores: 1.25·L; Eso-LM ≈ L)."""
    rows = [
        _bd3(512, 4, "efficient", [2.0] * 3, 2.0, nfe=640),  # 1.25·L as the paper's 10239/8192
        _cell("esolm", "esolm", 512, [1.0] * 3, 1.0, nfe=511, **ESO),
        _bd3(128, 4, "efficient", [2.0] * 3, 2.0, nfe=128),  # 1.0·L: the store passes missing
        _cell("esolm", "esolm", 128, [1.0] * 3, 1.0, nfe=127, **ESO),
    ]
    t = _table(
        monkeypatch, rows, {"t11_bd3lm_bs4_over_esolm_L8192", "t11_bd3lm_bs4_over_esolm_L2048"}
    ).set_index("claim_id")
    assert t.loc["t11_bd3lm_bs4_over_esolm_L8192", "nfe_check"].startswith("match")
    assert t.loc["t11_bd3lm_bs4_over_esolm_L2048", "nfe_check"].startswith("mismatch")


def _dit_small_call_flops(L: int) -> float:
    """Forward FLOPs of one full bidirectional DiT-small call on L tokens, by hand (§8)."""
    d, N, r, V = 768, 12, 4, 50258
    return L * 2 * N * (4 * d * d + 2 * r * d * d) + L * L * 4 * d * N + L * 2 * d * V


def test_paper_predictions_use_spec_sheet_peaks_and_the_ar_overhead(monkeypatch):
    """Finding: predicted_paper must be the cost model on the paper's hardware (spec-sheet peaks
    from hardware.yaml, the per-call overhead inferred from AR), num over den: AR at L = 2048 is
    overhead bound (= its published 13.3 s) and MDLM at L = 8192 compute bound (FLOPs / peak)."""
    rows = [
        _cell("ar", "ar", 128, [1.0] * 3, 1.0),
        _cell("mdlm", "mdlm", 512, [1.0] * 3, 1.0, **MDLM),
    ]
    df = pd.DataFrame(rows)
    ar_s, _ = claims.paper_prediction(df.iloc[0], 2048, 1, "A6000")
    assert ar_s == pytest.approx(13.3, rel=1e-6)
    peak = load_hardware().set_index("name").loc["A6000", "peak_bf16_dense_flop_s"]
    md_s, md_flops = claims.paper_prediction(df.iloc[1], 8192, 1, "A6000")
    calls = md_flops / _dit_small_call_flops(8192)
    assert calls == pytest.approx(round(calls), abs=1e-6) and 8000 < calls <= 8192
    assert md_s == pytest.approx(md_flops / peak, rel=1e-9)  # every call compute bound
    base = load_baselines("esolm_t11").set_index("row_id")
    rows = [
        _cell("mdlm", "mdlm", 512, [20.0] * 3, 20.0, **MDLM),
        _cell("esolm", "esolm", 512, [1.0] * 3, 1.0, **ESO),
        _cell("mdlm", "mdlm", 128, [5.0] * 3, 5.0, **MDLM),
        _cell("esolm", "esolm", 128, [1.0] * 3, 1.0, **ESO),
    ]
    t = _table(monkeypatch, rows, {"t11_mdlm_over_esolm_L8192"}).iloc[0]
    eso_s, eso_flops = claims.paper_prediction(pd.DataFrame(rows).iloc[1], 8192, 1, "A6000")
    assert t["predicted_paper"] == pytest.approx(md_s / eso_s)
    assert t["predicted_paper"] != pytest.approx(t["measured"])
    assert t["paper_tflops_num"] == pytest.approx(
        md_flops / base.loc["esolm_t11_mdlm_L8192", "wall_s_mean"] / 1e12
    )
    h200 = cm.Peaks.from_spec("H200", 0.0)
    spec = load_hardware().set_index("name").loc["H200"]
    assert h200.flops_per_s == pytest.approx(spec["peak_bf16_dense_flop_s"])
    assert h200.bytes_per_s == pytest.approx(spec["mem_bandwidth_bytes_s"])


# ---------------------------------------------------------------------------------------------
# Cost model: the Eso-LM step calibration recovers an injected timing function
# ---------------------------------------------------------------------------------------------


def _synthetic_op(kind: str, shape: tuple[int, ...]) -> float:
    """Made-up op times, affine in size, so the table interpolates them exactly."""
    if kind == "gemm":
        m, k, n, bias = shape
        return 2e-6 + 1e-10 * m * k * n + 1e-7 * bias
    if kind.startswith("sdpa"):
        b, H, q, kk, dh = shape
        return (3e-6 if kind == "sdpa" else 4e-6) + 1e-9 * b * H * (q + kk) * dh
    return 5e-7 + 1e-9 * shape[1]  # step_mask, rotate


STEP_EXTRA_S = 123e-6


def _true_residual(n: int, head: bool) -> float:
    return (60e-6 if head else 40e-6) + (4e-6 if n <= 64 else 3e-6) * n


def test_esolm_step_calibration_recovers_an_injected_step_extra(monkeypatch, tmp_path):
    """Finding: the Eso-LM masked-step extra is a derived number (step call − table ops − the
    2-token residual); with synthetic op times, residuals and a known extra injected, the
    calibration must recover each exactly and predict an unseen step call exactly."""
    monkeypatch.setenv("DLMBENCH_CACHE_DIR", str(tmp_path))
    model = tiny_model("esolm")
    cfg = model.config
    table = cm.MicroTable("cpu", torch.float32, measure=_synthetic_op)

    def true_time(rec):
        head = rec[3] > 0
        extra = STEP_EXTRA_S if cm.call_mask(rec) == "step" else 0.0
        return cm._table_ops_s(cfg, rec, 1, table) + _true_residual(rec[0], head) + extra

    def fake_curve(model, pts, device, kinds=("head", "store")):
        return {k: [true_time((n, n, n, n if k == "head" else 0)) for n in pts] for k in kinds}

    monkeypatch.setattr(cm, "_time_curve", fake_curve)
    monkeypatch.setattr(cm, "_time_step_call", lambda model, device: true_time((2, 2, 3, 1)))
    cal = cm.calibrate_calls(model, table=table, refresh=True)
    assert cal.step_extra_s == pytest.approx(STEP_EXTRA_S, rel=1e-9)
    for n, r in zip(cal.curve_tokens, cal.curve_head_s, strict=True):
        assert r == pytest.approx(_true_residual(n, True), rel=1e-9)
    peaks = cm.Peaks(1e11, 1e10, 0.0, "cpu", "float32", "hand")
    for rec in [(2, 2, 3, 1), (4, 4, 9, 2), (3, 3, 40, 1), (1, 1, 1, 1), (16, 16, 16, 16)]:
        got = cm.predict_seconds(cfg, [rec], 1, peaks, 4, calibration=cal, table=table)
        assert got == pytest.approx(true_time(rec), rel=1e-9), rec


def test_cached_prediction_never_measures_and_leaves_nan_when_nothing_is_cached(
    monkeypatch, tmp_path
):
    """Finding: the first `make demo` spent minutes per cell calibrating; with the `cached`
    policy a run predicts only from this machine's cache and otherwise leaves NaN."""
    monkeypatch.setenv("DLMBENCH_CACHE_DIR", str(tmp_path))
    model = tiny_model("esolm")
    peaks = cm.Peaks(1e11, 1e10, 0.0, "cpu", "float32", "hand")
    monkeypatch.setattr(cm, "_time_curve", lambda *a, **k: pytest.fail("calibrated"))
    monkeypatch.setattr(cm.MicroTable, "_measure_op", lambda *a: pytest.fail("measured"))
    recs = [(4, 4, 9, 2)]
    assert math.isnan(cm.predict_for_run(model.config, recs, 1, peaks, 4, model, "cached"))
    assert math.isnan(cm.predict_for_run(model.config, recs, 1, peaks, 4, model, "off"))
    monkeypatch.setenv(cm.PREDICT_ENV, "cached")
    assert cm.prediction_policy() == "cached"
    monkeypatch.setenv(cm.PREDICT_ENV, "sometimes")
    with pytest.raises(ValueError, match="sometimes"):
        cm.prediction_policy()


# ---------------------------------------------------------------------------------------------
# Energy per run
# ---------------------------------------------------------------------------------------------


def test_energy_per_run_is_mean_power_times_the_mean_execute_time():
    """Finding: energy columns are derived: joules per execute = the window's mean power × the
    mean timed wall time (not the median, not total / repeats when the window also spans the
    resets between repeats); per sample ÷ b, per token ÷ (b·L)."""
    meas = Measurement(
        wall_s=[1.0, 1.0, 4.0],  # mean 2, median 1
        meter={"energy_j": 66.0, "power_w_mean": 10.0, "duration_s": 6.6},
    )
    cell = SimpleNamespace(batch_size=4, seq_len=8)
    row = energy_columns(cell, meas)
    assert row["energy_j"] == pytest.approx(20.0)
    assert row["energy_j_total"] == pytest.approx(66.0)
    assert row["j_per_sample"] == pytest.approx(20.0 / 4)
    assert row["j_per_token"] == pytest.approx(20.0 / (4 * 8))
    none = energy_columns(cell, Measurement(wall_s=[1.0], meter={}))
    assert math.isnan(none["energy_j"]) and none["energy_method"] == "none"


def test_trapezoid_energy_of_a_linear_power_ramp_is_exact():
    """Finding: the integration fallback's joules are ∫P dt; a ramp 100 → 300 W over 2 s is 400 J
    whatever the sample order (mean power 200 W × 2 s)."""
    from harness.measure.energy import trapezoid_j

    ts = np.linspace(0.0, 2.0, 11)
    samples = [(float(t), 100.0 + 100.0 * float(t)) for t in ts][::-1]
    assert trapezoid_j(samples) == pytest.approx(400.0)


# ---------------------------------------------------------------------------------------------
# BD3-LM temperature
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_bd3lm_temperature_samples_softmax_of_logits_over_t(temperature):
    """Finding: temperature must divide the logits: token frequencies of a committed block
    equal softmax(logits / T) over the non-mask tokens (T < 1 sharpens, T > 1 flattens)."""
    V, mask_id, b = 6, 5, 40000
    raw = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5, 3.0], dtype=torch.float64)
    logits = raw.to(torch.float32).expand(b, 1, V).clone()
    block = torch.full((b, 1), mask_id, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    cfg = BD3LMConfig(block_size=1, temperature=temperature)
    chosen = commit(block, logits, torch.ones(b, dtype=torch.long), POLICIES.get("random")(),
                    cfg, mask_id, g)  # fmt: skip
    assert chosen.all()
    freq = np.bincount(block[:, 0].numpy(), minlength=V) / b
    z = np.exp(raw.numpy()[:mask_id] / temperature)
    want = np.append(z / z.sum(), 0.0)  # the mask token never appears
    assert np.abs(freq - want).max() < 0.01, (freq, want)
    wrong = np.exp(raw.numpy()[:mask_id] * temperature)
    if temperature != 1.0:  # multiplying instead of dividing is far off
        assert np.abs(freq[:mask_id] - wrong / wrong.sum()).max() > 0.05
