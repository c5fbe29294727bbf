"""The published numbers load with the right columns, exactly as printed, and the claims derive
from the rows.

Oracles: the numbers typed below from shared/reference/published-numbers.md (independently of the
CSVs); ratios recomputed with exact decimal arithmetic from the raw CSV text (not through the
loader); the tolerance rules of baselines/data/README.md re-implemented here.
"""

from __future__ import annotations

import csv
import math
import shutil
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pandas as pd
import pytest
import yaml

from baselines import (
    DATA_DIR,
    BaselineDataError,
    load_baselines,
    load_claims,
    load_hardware,
    table_names,
)

RESULT_COLUMNS = (
    "sampler", "batch_size", "seq_len", "p_num_steps", "p_block_size", "p_alpha0_eval",
    "wall_s_mean", "wall_s_std", "s_per_sample", "gen_ppl", "gen_ppl_mean_per_sample", "mauve",
    "entropy_nats", "nfe_total", "nfe_denoise", "nfe_expected", "nfe_profile_sim", "n_samples",
)  # fmt: skip
PROVENANCE = (
    "paper", "arxiv_id", "arxiv_version", "table", "table_label", "hardware", "batch_size",
    "seq_len", "nfe", "nfe_kind", "time_units", "statistic", "tol_wall_rel", "tol_gen_ppl_rel",
    "tol_mauve_abs", "tol_entropy_abs", "caveats", "notes", "source",
)  # fmt: skip


def raw_rows() -> dict[str, dict[str, str]]:
    """Every CSV row as raw text, keyed by row_id (independent of the loader)."""
    rows = {}
    for path in sorted(DATA_DIR.glob("*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            for rec in csv.DictReader(f):
                rows[rec["row_id"]] = rec
    return rows


def by_id(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index("row_id")


# ---------------------------------------------------------------------------------------------
# Loading and columns
# ---------------------------------------------------------------------------------------------


def test_all_tables_load_with_results_and_provenance_columns():
    df = load_baselines()
    assert table_names() == [
        "bd3lm_t7", "esolm_appx_t3", "esolm_t11", "esolm_t12", "esolm_t13", "esolm_t14",
        "esolm_t15", "mdlm_t10", "mdlm_t5",
    ]  # fmt: skip
    missing = [c for c in RESULT_COLUMNS + PROVENANCE if c not in df.columns]
    assert not missing
    assert set(df["table"]) == set(table_names())
    assert df["row_id"].is_unique
    assert set(df["sampler"]) <= {"ar", "mdlm", "bd3lm", "esolm", "sedd", "ssdlm"}
    assert str(df["batch_size"].dtype) == "Int64" and df["wall_s_mean"].dtype == "float64"
    # every timed row says where, how and with what statistic
    timed = df[df["wall_s_mean"].notna()]
    assert timed[["hardware", "statistic", "timing_mode", "time_units"]].notna().all().all()
    assert set(timed["hardware"]) <= set(load_hardware()["name"])


def test_unknown_table_is_a_clear_error():
    with pytest.raises(BaselineDataError) as err:
        load_baselines("esolm_t1")
    msg = str(err.value)
    assert "'esolm_t1'" in msg and "Did you mean" in msg and "esolm_t11" in msg


def test_loader_returns_copies():
    a = load_baselines("esolm_t11")
    a.loc[0, "wall_s_mean"] = -1.0
    assert (load_baselines("esolm_t11")["wall_s_mean"] > 0).all()


# ---------------------------------------------------------------------------------------------
# The numbers, exactly
# ---------------------------------------------------------------------------------------------

# (sampler, L′ or None, L) -> (mean, std), Eso-LMs Table 11, A6000, batch 1.
TABLE_11 = {
    ("ar", None, 2048): (13.3, 0.9), ("ar", None, 8192): (54.0, 0.2),
    ("mdlm", None, 2048): (201.3, 0.4), ("mdlm", None, 8192): (5438.3, 3.3),
    ("bd3lm", 4, 2048): (24.3, 0.7), ("bd3lm", 4, 8192): (312.0, 1.7),
    ("bd3lm", 16, 2048): (21.3, 0.1), ("bd3lm", 16, 8192): (268.1, 1.2),
    ("esolm", None, 2048): (14.6, 0.3), ("esolm", None, 8192): (82.1, 0.3),
}  # fmt: skip


def test_table_11_exact():
    t11 = load_baselines("esolm_t11")
    assert len(t11) == len(TABLE_11)
    got = {}
    for r in t11.itertuples():
        bs = None if pd.isna(r.p_block_size) else int(r.p_block_size)
        got[(r.sampler, bs, int(r.seq_len))] = (r.wall_s_mean, r.wall_s_std)
    assert got == TABLE_11
    assert (t11["hardware"] == "A6000").all() and (t11["batch_size"] == 1).all()
    assert (t11["statistic"] == "mean").all() and (t11["arxiv_version"] == "v4").all()
    assert (t11["table_label"] == "Table 11").all()
    # NFE: calls inferred for AR / BD3-LM, expectation for MDLM / Eso-LM
    t = by_id(t11)
    assert t.loc["esolm_t11_ar_L8192", "nfe_total"] == 8191
    assert t.loc["esolm_t11_bd3lm_bs4_L2048", "nfe_total"] == 2048 - 1 + 2048 // 4
    assert t.loc["esolm_t11_bd3lm_bs16_L8192", "nfe_total"] == 8192 - 1 + 8192 // 16
    assert t.loc["esolm_t11_mdlm_L8192", "nfe_expected"] == 8159
    assert pd.isna(t.loc["esolm_t11_mdlm_L8192", "nfe_total"])
    assert all("nfe_inferred" in f for f in t11["caveats"])


def test_table_12_exact():
    t = by_id(load_baselines("esolm_t12"))
    bd3, eso = t.loc["esolm_t12_bd3lm_bs4_L10240"], t.loc["esolm_t12_esolm_a0125_L10240"]
    assert (bd3.wall_s_mean, bd3.wall_s_std, bd3.gen_ppl, bd3.entropy_nats) == (
        588.6,
        3.2,
        29.50,
        6.5,
    )
    assert (eso.wall_s_mean, eso.wall_s_std, eso.gen_ppl, eso.entropy_nats) == (
        116.4,
        0.4,
        23.40,
        6.3,
    )
    assert eso.p_alpha0_eval == 0.125 and bd3.p_block_size == 4 and eso.seq_len == 10240
    assert "hardware_unverified" in eso.caveats


def test_table_13_alpha_eval_1_grid_exact():
    t13 = load_baselines("esolm_t13")
    main = t13[(t13["p_alpha0_eval"] == 1) & (t13["alpha0_train"] == 1)].sort_values("p_num_steps")
    expected = [  # T, NFE, time, Gen PPL, MAUVE, entropy
        (16, 16, 2.97, 119.89, 0.0796, 5.5), (32, 32, 3.40, 77.55, 0.2468, 5.5),
        (64, 64, 4.39, 61.43, 0.4166, 5.4), (128, 128, 6.40, 53.28, 0.4467, 5.4),
        (256, 251, 10.51, 50.76, 0.4766, 5.3), (1024, 646, 24.19, 49.05, 0.4939, 5.3),
        (4096, 906, 33.33, 48.86, 0.5425, 5.3),
    ]  # fmt: skip
    got = [
        (r.p_num_steps, r.nfe_profile_sim, r.wall_s_mean, r.gen_ppl, r.mauve, r.entropy_nats)
        for r in main.itertuples()
    ]
    assert got == expected
    assert (t13["batch_size"] == 512).all() and (t13["hardware"] == "H200").all()
    assert (t13["samples_timed"] == 512).all()
    assert main["s_per_sample"].tolist() == [t / 512 for _, _, t, *_ in expected]


def test_table_13_other_alpha_eval_rows():
    t = by_id(load_baselines("esolm_t13"))
    cells = {  # row: (α0_eval, T, NFE, time, PPL, MAUVE)
        "esolm_t13_a05_T16": (0.5, 16, 529, 26.93, 72.16, 0.29),
        "esolm_t13_a05_T1024": (0.5, 1024, 913, 34.83, 47.72, 0.55),
        "esolm_t13_a025_T128": (0.25, 128, 879, 35.11, 43.31, 0.59),
        "esolm_t13_a00625_T1024": (0.0625, 1024, 1022, 36.99, 24.23, 0.69),
    }
    for rid, cell in cells.items():
        r = t.loc[rid]
        assert (
            r.p_alpha0_eval,
            r.p_num_steps,
            r.nfe_profile_sim,
            r.wall_s_mean,
            r.gen_ppl,
            r.mauve,
        ) == cell
        assert "rounded_cells" in r.caveats
    best = t.loc["esolm_t13_a00625_T1024_train0125"]
    assert (best.alpha0_train, best.gen_ppl, best.mauve) == (0.125, 23.89, 0.8318)
    assert t.loc["esolm_t13_a00625_T128_train025", "mauve"] == 0.8344
    assert t.loc["esolm_t13_a1_T16_train0125", "gen_ppl"] == 227.34
    # entropy printed as a range for α0_eval 0.5 / 0.25: left empty, flagged
    assert pd.isna(t.loc["esolm_t13_a05_T16", "entropy_nats"])
    assert "entropy_range" in t.loc["esolm_t13_a05_T16", "caveats"]


def test_table_14_mdlm_exact():
    t14 = load_baselines("esolm_t14").sort_values("p_num_steps")
    assert t14["p_num_steps"].tolist() == [8, 16, 32, 48, 64, 128, 256, 1024, 4096]
    assert t14["nfe_profile_sim"].tolist() == [8, 16, 32, 48, 64, 128, 251, 657, 907]
    assert t14["gen_ppl"].tolist() == [
        246.70,
        109.70,
        67.44,
        55.96,
        51.11,
        43.58,
        40.44,
        37.15,
        36.48,
    ]
    assert t14["mauve"].tolist() == [
        0.0134,
        0.1353,
        0.4195,
        0.5062,
        0.6123,
        0.6477,
        0.6924,
        0.7267,
        0.7026,
    ]
    assert t14["entropy_nats"].tolist() == [5.6, 5.5, 5.5, 5.5, 5.4, 5.4, 5.4, 5.3, 5.3]
    assert t14["wall_s_mean"].tolist() == [
        7.19,
        13.81,
        27.10,
        39.42,
        53.48,
        106.96,
        213.92,
        566.19,
        752.06,
    ]
    assert t14["quality_batch_size"].tolist() == [32] * 7 + [1, 1]
    assert "time_extrapolated" in by_id(t14).loc["esolm_t14_mdlm_T256", "caveats"]


def test_table_15_bd3lm_exact():
    t = by_id(load_baselines("esolm_t15"))
    assert len(t) == 15
    cells = {  # (L′, T): (T′, NFE, PPL, entropy, MAUVE, time)
        (4, 256): (1, 512, 184.86, 4.00, 0.0048, 26.26),
        (4, 4096): (16, 1180, 34.93, 5.24, 0.6726, 60.32),
        (8, 1024): (8, 812, 80.31, 5.20, 0.1479, 42.14),
        (16, 512): (8, 515, 112.56, 5.28, 0.0971, 31.17),
        (16, 4096): (64, 984, 37.61, 5.29, 0.7248, 58.82),
    }
    for (bs, T), cell in cells.items():
        r = t.loc[f"esolm_t15_bd3lm_bs{bs}_T{T}"]
        got = (r.p_steps_per_block, r.nfe_total, r.gen_ppl, r.entropy_nats, r.mauve, r.wall_s_mean)
        assert got == cell
    # T′ = T·L′/1024 on every row
    assert (t["p_steps_per_block"] * 1024 == t["p_num_steps"] * t["p_block_size"]).all()


def test_bd3lm_table_7_and_appendix_table_3():
    t7 = by_id(load_baselines("bd3lm_t7"))
    assert t7.loc["bd3lm_t7_bd3lm_bs4_L1024", "gen_ppl_mean_per_sample"] == 25.7
    assert t7.loc["bd3lm_t7_mdlm_L2048", "gen_ppl_mean_per_sample"] == 41.3
    assert t7.loc["bd3lm_t7_ar_L1024", "gen_ppl_mean_per_sample"] == 14.1
    assert t7["gen_ppl"].isna().all()  # per-sample means, never corpus PPL
    assert t7.loc["bd3lm_t7_bd3lm_bs16_L2048", "nfe_denoise"] == 2047
    a3 = by_id(load_baselines("esolm_appx_t3"))
    r = a3.loc["esolm_appx_t3_bd3lm_bs16_T1024_tries1"]
    assert (r.gen_ppl, r.entropy_nats, r.p_num_tries) == (72.80, 5.35, 1)
    assert a3.loc["esolm_appx_t3_mdlm_T1024_tries1", "gen_ppl"] == 41.92
    assert a3.loc["esolm_appx_t3_ar_tries10", "gen_ppl"] == 13.76


def test_mdlm_tables_convert_units():
    t10 = by_id(load_baselines("mdlm_t10"))
    r = t10.loc["mdlm_t10_mdlm_no_cache_T5000"]
    assert (r.time_printed, r.time_units, r.samples_timed) == ("70.3", "min", 64)
    assert r.wall_s_mean == pytest.approx(70.3 * 60, rel=1e-12)
    assert r.s_per_sample == pytest.approx(70.3 * 60 / 64, rel=1e-12)
    t5 = by_id(load_baselines("mdlm_t5"))
    assert t5.loc["mdlm_t5_mdlm_L2048", "wall_s_mean"] == 89.3
    assert t5.loc["mdlm_t5_ssdlm_L2048", "gen_ppl"] == 35.43


# ---------------------------------------------------------------------------------------------
# Claims: recomputed from the rows to the printed precision
# ---------------------------------------------------------------------------------------------


def decimal_ratio(rows: dict[str, dict[str, str]], num: str, den: str) -> Decimal:
    """num/den from the raw CSV text, exactly (time_printed × unit; unit factors are integers)."""
    factor = {"s": Decimal(1), "min": Decimal(60)}

    def seconds(rid: str) -> Decimal:
        rec = rows[rid]
        return Decimal(rec["time_printed"].split("±")[0].strip()) * factor[rec["time_units"]]

    return seconds(num) / seconds(den)


def test_claims_recompute_from_rows_to_printed_precision():
    rows, claims = raw_rows(), load_claims()
    assert claims["claim_id"].is_unique
    for c in claims.itertuples():
        exact = decimal_ratio(rows, c.numerator_row, c.denominator_row)
        assert float(exact) == pytest.approx(c.table_value, rel=1e-12), c.claim_id
        if c.rounding == "nearest":
            q = Decimal(1).scaleb(-int(c.decimals))
            printed = Decimal(repr(c.published_value)).quantize(q)
            assert exact.quantize(q, rounding=ROUND_HALF_UP) == printed, c.claim_id
        elif c.rounding == "range":
            assert Decimal(repr(c.published_lo)) <= exact <= Decimal(repr(c.published_hi)), (
                c.claim_id
            )
        else:  # "none": not a rounding of the table, but within its own band
            assert c.band_lo <= float(exact) <= c.band_hi, c.claim_id
            assert float(exact.quantize(Decimal(1).scaleb(-int(c.decimals)))) != c.published_value


def test_the_headline_ratios_are_listed():
    c = load_claims().set_index("claim_id")
    listed = {
        "t11_mdlm_over_esolm_L2048": 13.8, "t11_mdlm_over_esolm_L8192": 66.2,
        "t11_bd3lm_bs4_over_esolm_L2048": 1.66, "t11_bd3lm_bs4_over_esolm_L8192": 3.80,
        "t11_bd3lm_bs16_over_esolm_L2048": 1.46, "t11_bd3lm_bs16_over_esolm_L8192": 3.27,
        "t11_esolm_over_ar_L2048": 1.10, "t11_esolm_over_ar_L8192": 1.52,
        "abstract_mdlm_low": 14, "abstract_mdlm_high": 65, "abstract_bd3lm_low": 3,
        "abstract_bd3lm_high": 4, "t12_bd3lm_bs4_over_esolm_L10240": 5.06,
    }  # fmt: skip
    for cid, value in listed.items():
        assert c.loc[cid, "published_value"] == value, cid
    r = c.loc["t11_bd3lm_bs4_over_esolm_L8192"]
    assert (r.numerator_sampler, r.numerator_params, r.denominator_sampler) == (
        "bd3lm",
        {"p_block_size": 4, "p_steps_per_block": 5000, "p_top_p": 1},
        "esolm",
    )
    assert (r.seq_len, r.batch_size, r.hardware) == (8192, 1, "A6000")
    assert c.loc["abstract_mdlm_high", "rounding"] == "none"  # 66.2 rounds to 66, not 65
    assert pd.isna(c.loc["t11_mdlm_L8192_over_L2048", "seq_len"])  # the sides differ in L


# ---------------------------------------------------------------------------------------------
# Tolerance bands follow the documented rules
# ---------------------------------------------------------------------------------------------


def ceil_2dp(x: float) -> float:
    return math.ceil(x * 100 - 1e-9) / 100


def test_row_tolerances_follow_the_rule():
    df = load_baselines()
    for r in df.itertuples():
        if pd.isna(r.wall_s_mean):
            assert pd.isna(r.tol_wall_rel), r.row_id
        else:
            spread = 0.0 if pd.isna(r.wall_s_std) else 3 * r.wall_s_std / r.wall_s_mean
            assert r.tol_wall_rel == ceil_2dp(max(0.10, spread)), r.row_id
        has_ppl = not (pd.isna(r.gen_ppl) and pd.isna(r.gen_ppl_mean_per_sample))
        assert (r.tol_gen_ppl_rel == 0.10) if has_ppl else pd.isna(r.tol_gen_ppl_rel), r.row_id
        assert (r.tol_mauve_abs == 0.05) if not pd.isna(r.mauve) else pd.isna(r.tol_mauve_abs)
        ent = not pd.isna(r.entropy_nats)
        assert (r.tol_entropy_abs == 0.10) if ent else pd.isna(r.tol_entropy_abs), r.row_id
    assert by_id(df).loc["esolm_t11_ar_L2048", "tol_wall_rel"] == 0.21  # 3·0.9/13.3 = 0.203


def test_claim_tolerances_follow_the_rule():
    df, claims = by_id(load_baselines()), load_claims()
    for c in claims.itertuples():
        n, d = df.loc[c.numerator_row], df.loc[c.denominator_row]
        rel = [0.0 if pd.isna(r.wall_s_std) else r.wall_s_std / r.wall_s_mean for r in (n, d)]
        sigma = math.sqrt(rel[0] ** 2 + rel[1] ** 2)
        if c.rounding == "range":
            half_unit = 0.0
        else:
            half_unit = 0.5 * 10 ** (-int(c.decimals)) / c.published_value
        assert c.tol_rel == ceil_2dp(max(0.25, 3 * sigma, half_unit)), c.claim_id
        lo = c.published_lo if c.rounding == "range" else c.published_value
        hi = c.published_hi if c.rounding == "range" else c.published_value
        assert c.band_lo == pytest.approx(lo / (1 + c.tol_rel))
        assert c.band_hi == pytest.approx(hi * (1 + c.tol_rel))


# ---------------------------------------------------------------------------------------------
# Hardware
# ---------------------------------------------------------------------------------------------


def test_hardware_presets():
    hw = load_hardware().set_index("name")
    assert {"A6000", "H200"} <= set(hw.index)
    assert hw.loc["A6000", "peak_bf16_dense_tflops"] == 154.8
    assert hw.loc["A6000", "mem_bandwidth_gb_s"] == 768
    assert hw.loc["H200", "peak_bf16_dense_tflops"] == 989.5
    assert hw.loc["H200", "mem_bandwidth_bytes_s"] == 4.8e12
    assert hw.loc["H200", "peak_bf16_dense_flop_s"] == pytest.approx(989.5e12)
    assert not hw["verified"].any()  # none was checked against a primary datasheet
    assert (hw["sources"].str.len() > 0).all() and (hw["derivation"].str.len() > 0).all()


# ---------------------------------------------------------------------------------------------
# Bad files: every problem named, all at once
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def data_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(DATA_DIR, dst)
    return dst


def edit_csv(path: Path, rid: str, /, **cells: str) -> None:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    for r in rows:
        if r["row_id"] == rid:
            r.update(cells)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def test_bad_cells_are_all_reported_with_file_line_row_and_column(data_copy: Path):
    path = data_copy / "esolm_t11.csv"
    edit_csv(path, "esolm_t11_mdlm_L2048", wall_s_mean="abc")  # line 4
    edit_csv(path, "esolm_t11_esolm_L8192", sampler="esolmm", wall_s_std="0.5")  # line 11
    edit_csv(data_copy / "esolm_t14.csv", "esolm_t14_mdlm_T8", mauve="1.5", hardware="H100")
    with pytest.raises(BaselineDataError) as err:
        load_baselines(data_dir=data_copy)
    msg, problems = str(err.value), err.value.problems
    assert "esolm_t11.csv: line 4 (row_id 'esolm_t11_mdlm_L2048'), column 'wall_s_mean'" in msg
    assert "'abc' is not a number" in msg
    assert "line 11 (row_id 'esolm_t11_esolm_L8192'), column 'sampler': 'esolmm'" in msg
    assert "Did you mean: esolm" in msg
    assert "column 'wall_s_std'" in msg and "does not match time_printed '82.1 ± 0.3'" in msg
    assert (
        "esolm_t14.csv: line 2 (row_id 'esolm_t14_mdlm_T8'), column 'mauve': 1.5 must be in [0, 1]"
        in msg
    )
    assert "column 'hardware': 'H100' is not in hardware.yaml" in msg
    assert len(problems) >= 5


def test_unknown_and_missing_columns_are_named(data_copy: Path):
    path = data_copy / "mdlm_t5.csv"
    text = path.read_text(encoding="utf-8").replace("gen_ppl,", "gen_pll,", 1)
    text = text.replace("row_id,", "", 1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BaselineDataError) as err:
        load_baselines(data_dir=data_copy)
    msg = str(err.value)
    assert "mdlm_t5.csv: required column 'row_id' is missing" in msg
    assert "unknown column 'gen_pll'. Did you mean: gen_ppl" in msg


def test_printed_time_must_convert_to_wall_s(data_copy: Path):
    edit_csv(data_copy / "mdlm_t10.csv", "mdlm_t10_mdlm_no_cache_T5000", wall_s_mean="70.3")
    with pytest.raises(BaselineDataError) as err:
        load_baselines(data_dir=data_copy)
    assert "column 'wall_s_mean': 70.3 ≠ time_printed '70.3' in min = 4218.0 s" in str(err.value)


def test_duplicate_row_ids_and_missing_bands(data_copy: Path):
    edit_csv(data_copy / "esolm_t12.csv", "esolm_t12_bd3lm_bs4_L10240", row_id="esolm_t11_ar_L2048")
    edit_csv(data_copy / "esolm_t15.csv", "esolm_t15_bd3lm_bs4_T256", tol_mauve_abs="")
    with pytest.raises(BaselineDataError) as err:
        load_baselines(data_dir=data_copy)
    msg = str(err.value)
    assert "column 'tol_mauve_abs': is empty but mauve is set" in msg
    assert "row_id 'esolm_t11_ar_L2048' appears more than once" in msg


def test_bad_claims_are_named(data_copy: Path):
    path = data_copy / "claims.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["claims"][0]["numerator_row"] = "esolm_t11_mdlm_L2049"
    doc["claims"][1]["rounding"] = "nearst"
    doc["claims"][2]["decimal"] = 2
    doc["claims"].append(dict(doc["claims"][3]))  # duplicate id
    doc["claims"][4]["denominator_row"] = "esolm_t13_a1_T16"  # A6000 / H200 mix
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(BaselineDataError) as err:
        load_claims(data_dir=data_copy)
    msg = str(err.value)
    assert "claims.yaml: claim #1 ('t11_mdlm_over_esolm_L2048'), key 'numerator_row'" in msg
    assert "row 'esolm_t11_mdlm_L2049' is in no table. Did you mean: esolm_t11_mdlm_L2048" in msg
    assert "key 'rounding': 'nearst'" in msg
    assert "unknown key 'decimal'. Did you mean: decimals?" in msg
    assert "claim_id 't11_bd3lm_bs4_over_esolm_L8192' appears more than once" in msg
    assert "the rows differ in 'hardware' (A6000 vs H200)" in msg


def test_bad_hardware_is_named(data_copy: Path):
    path = data_copy / "hardware.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    del doc["devices"]["A6000"]["mem_bandwidth_gb_s"]
    doc["devices"]["H200"]["peak_bf16_dense_tflops"] = "lots"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(BaselineDataError) as err:
        load_hardware(data_dir=data_copy)
    msg = str(err.value)
    assert "hardware.yaml: device 'A6000', key 'mem_bandwidth_gb_s': is missing" in msg
    assert "device 'H200', key 'peak_bf16_dense_tflops': 'lots' must be a positive number" in msg
