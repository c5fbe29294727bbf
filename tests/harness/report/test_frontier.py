"""Frontier maths on hand-made points with hand-computed answers.

Oracle: the answers are worked out by hand in the comments (log-log interpolation between two
points is a power law, so halfway in log quality is halfway in log time).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.report.frontier import (
    FrontierError,
    higher_is_better,
    matched_quality_speedups,
    pareto_front,
    pareto_front_by,
    time_at_quality,
)

SQ2 = math.sqrt(2.0)


def rows(method: str, pts: list[tuple[float, float]], y: str = "gen_ppl") -> pd.DataFrame:
    return pd.DataFrame({"sampler": method, "wall_s": [p[0] for p in pts], y: [p[1] for p in pts]})


# A: (3, 60) is dominated by (2, 50); (2, 80) by (2, 50) (equal time, worse PPL); (5, 25) by
# (4, 25) (equal PPL, slower); (4, 25) appears twice (a tie: both kept).
A = rows("a", [(1, 100), (3, 60), (2, 50), (2, 80), (4, 25), (5, 25), (4, 25)])
B = rows("b", [(10, 100), (20, 25)])


def front_points(front: pd.DataFrame, y: str = "gen_ppl") -> list[tuple[float, float]]:
    return list(zip(front["wall_s"].tolist(), front[y].tolist()))


# ---------------------------------------------------------------------------------------------
# pareto_front
# ---------------------------------------------------------------------------------------------


def test_front_drops_dominated_points_and_keeps_exact_ties():
    f = pareto_front(A, "wall_s", "gen_ppl")
    assert front_points(f) == [(1, 100), (2, 50), (4, 25), (4, 25)]
    assert list(f.index) == [0, 2, 4, 6]  # original rows, best time first


def test_front_direction_comes_from_the_metric():
    assert higher_is_better("mauve") and not higher_is_better("gen_ppl")
    # MAUVE: higher is better, so (2, 0.3) is dominated by (1, 0.4)
    m = rows("a", [(1, 0.4), (2, 0.3), (3, 0.8)], y="mauve")
    assert front_points(pareto_front(m, "wall_s", "mauve"), "mauve") == [(1, 0.4), (3, 0.8)]
    # forcing the opposite direction flips the answer
    flipped = pareto_front(m, "wall_s", "mauve", y_lower_is_better=True)
    assert front_points(flipped, "mauve") == [(1, 0.4), (2, 0.3)]
    # a higher-is-better x (throughput): the fastest is the largest
    t = pd.DataFrame({"tokens_per_s": [10.0, 20.0, 5.0], "gen_ppl": [30.0, 40.0, 20.0]})
    f = pareto_front(t, "tokens_per_s", "gen_ppl", x_lower_is_better=False)
    assert list(zip(f["tokens_per_s"], f["gen_ppl"])) == [(20.0, 40.0), (10.0, 30.0), (5.0, 20.0)]


def test_front_ignores_missing_values_and_failed_cells():
    df = rows("a", [(1, 100), (0.5, math.nan), (2, 50), (0.1, 10)])
    df["status"] = ["ok", "ok", "ok", "error"]
    assert front_points(pareto_front(df, "wall_s", "gen_ppl")) == [(1, 100), (2, 50)]


def test_single_point_and_empty_fronts():
    one = rows("a", [(3, 40)])
    assert front_points(pareto_front(one, "wall_s", "gen_ppl")) == [(3, 40)]
    empty = pareto_front(rows("a", []).astype(float), "wall_s", "gen_ppl")
    assert len(empty) == 0


def test_front_by_method():
    f = pareto_front_by(pd.concat([A, B]), "wall_s", "gen_ppl", by="sampler")
    assert front_points(f[f.sampler == "a"]) == [(1, 100), (2, 50), (4, 25), (4, 25)]
    assert front_points(f[f.sampler == "b"]) == [(10, 100), (20, 25)]


def test_unknown_direction_and_missing_columns_are_clear_errors():
    df = pd.DataFrame({"wall_s": [1.0], "entropy_nats": [5.0]})
    with pytest.raises(FrontierError, match="'entropy_nats' has no declared direction"):
        pareto_front(df, "wall_s", "entropy_nats")
    assert len(pareto_front(df, "wall_s", "entropy_nats", y_lower_is_better=False)) == 1
    with pytest.raises(FrontierError) as err:
        pareto_front(df, "wall_sec", "gen_ppl")
    msg = str(err.value)
    assert "'wall_sec', 'gen_ppl'" in msg and "Did you mean: wall_s?" in msg
    assert "Present: wall_s, entropy_nats" in msg
    with pytest.raises(FrontierError, match="column 'wall_s' holds"):
        pareto_front(pd.DataFrame({"wall_s": ["fast"], "gen_ppl": [3.0]}), "wall_s", "gen_ppl")


# ---------------------------------------------------------------------------------------------
# time_at_quality
# ---------------------------------------------------------------------------------------------


def test_time_at_quality_log_log():
    # front A: (1, 100), (2, 50), (4, 25)
    assert time_at_quality(A, 50.0) == 2.0  # a frontier point: exact
    assert time_at_quality(A, 100.0) == 1.0 and time_at_quality(A, 25.0) == 4.0
    # √(100·50) is halfway in log PPL between 1 s and 2 s → √2 s; √(50·25) → √(2·4) = 2√2 s
    assert time_at_quality(A, math.sqrt(5000.0)) == pytest.approx(SQ2, rel=1e-12)
    assert time_at_quality(A, math.sqrt(1250.0)) == pytest.approx(2 * SQ2, rel=1e-12)
    # 30 between (2, 50) and (4, 25): log x = log 2 + log(30/50)/log(25/50) · log 2
    expected = 2.0 * 2.0 ** (math.log(0.6) / math.log(0.5))
    assert time_at_quality(A, 30.0) == pytest.approx(expected, rel=1e-12)
    # outside the measured range: NaN on both sides
    assert math.isnan(time_at_quality(A, 150.0)) and math.isnan(time_at_quality(A, 20.0))


def test_time_at_quality_vectorised_linear_and_higher_is_better():
    got = time_at_quality(A, [75.0, 50.0, 10.0], log=False)
    assert isinstance(got, np.ndarray) and got[0] == pytest.approx(1.5) and got[1] == 2.0
    assert math.isnan(got[2])
    # MAUVE rises along the front: 0.4·√2 is halfway in log MAUVE between (2, .4) and (4, .8)
    m = rows("a", [(1, 0.2), (2, 0.4), (4, 0.8)], y="mauve")
    assert time_at_quality(m, 0.4 * SQ2, y="mauve") == pytest.approx(2 * SQ2, rel=1e-12)
    assert math.isnan(time_at_quality(m, 0.9, y="mauve"))


def test_time_at_quality_uses_the_front_not_dominated_points():
    # (3, 60) is dominated; interpolating through it would give a different answer at 55
    t = time_at_quality(A, 55.0)
    expected = 2.0 ** (math.log(55 / 100) / math.log(50 / 100))  # between (1, 100) and (2, 50)
    assert t == pytest.approx(expected, rel=1e-12)


def test_time_at_quality_single_point_front():
    one = rows("a", [(3, 40)])
    assert time_at_quality(one, 40.0) == 3.0
    assert math.isnan(time_at_quality(one, 39.0)) and math.isnan(time_at_quality(one, 41.0))


def test_time_at_quality_rejects_non_positive_values_in_log_mode():
    bad = rows("a", [(1, 0.0), (2, 0.5)], y="mauve")
    with pytest.raises(FrontierError, match="positive frontier qualities.*'mauve'.*log=False"):
        time_at_quality(bad, 0.3, y="mauve")
    assert time_at_quality(bad, 0.25, y="mauve", log=False) == pytest.approx(1.5)


# ---------------------------------------------------------------------------------------------
# matched_quality_speedups
# ---------------------------------------------------------------------------------------------


def test_matched_quality_speedups_on_overlapping_fronts():
    out = matched_quality_speedups(pd.concat([A, B]), n_levels=3)
    assert list(out.columns) == [
        "method_a", "method_b", "gen_ppl", "wall_s_a", "wall_s_b", "ratio_a_over_b", "note",
    ]  # fmt: skip
    # overlap [25, 100]; geometric grid 25, 50, 100
    assert out["gen_ppl"].tolist() == pytest.approx([25.0, 50.0, 100.0])
    assert out["wall_s_a"].tolist() == pytest.approx([4.0, 2.0, 1.0])
    # B at 50: halfway in log PPL between (10, 100) and (20, 25) → 10√2
    assert out["wall_s_b"].tolist() == pytest.approx([20.0, 10 * SQ2, 10.0])
    assert out["ratio_a_over_b"].tolist() == pytest.approx([0.2, 2 / (10 * SQ2), 0.1])
    assert (out["method_a"] == "a").all() and (out["method_b"] == "b").all()
    assert (out["note"] == "").all()


def test_matched_quality_speedups_non_overlapping_and_single_point():
    C = rows("c", [(1, 10), (2, 5)])  # PPL 5–10: no overlap with A (25–100)
    D = rows("d", [(5, 30)])  # a single point inside A's range
    out = matched_quality_speedups(pd.concat([A, C, D]), n_levels=4).set_index(
        ["method_a", "method_b"]
    )
    ac = out.loc[("a", "c")]
    assert math.isnan(ac["gen_ppl"]) and math.isnan(ac["ratio_a_over_b"])
    assert "no common quality range: a spans [25, 100], c spans [5, 10]" in ac["note"]
    ad = out.loc[("a", "d")]  # overlap is the single level 30
    assert ad["gen_ppl"] == 30.0
    t_a = 2.0 * 2.0 ** (math.log(0.6) / math.log(0.5))
    assert ad["wall_s_a"] == pytest.approx(t_a) and ad["wall_s_b"] == 5.0
    assert ad["ratio_a_over_b"] == pytest.approx(t_a / 5.0)
    assert "no common quality range" in out.loc[("c", "d")]["note"]


def test_matched_quality_speedups_explicit_levels_mauve_and_errors():
    a = rows("a", [(1, 0.2), (4, 0.8)], y="mauve")
    b = rows("b", [(2, 0.2), (8, 0.6)], y="mauve")
    out = matched_quality_speedups(pd.concat([a, b]), quality_col="mauve", levels=[0.4, 0.7])
    # a at 0.4: halfway in log MAUVE (0.2→0.8) → 2 s; b at 0.4: log(2)/log(3) of the way 2→8
    assert out["wall_s_a"].tolist()[0] == pytest.approx(2.0)
    assert out["wall_s_b"].tolist()[0] == pytest.approx(2.0 * 4.0 ** (math.log(2) / math.log(3)))
    assert math.isnan(out["wall_s_b"].tolist()[1]) and math.isnan(out["ratio_a_over_b"].tolist()[1])
    with pytest.raises(FrontierError, match="'quality'"):
        matched_quality_speedups(a, quality_col="quality")
    with pytest.raises(FrontierError, match="n_levels is 0"):
        matched_quality_speedups(a, quality_col="mauve", n_levels=0)
