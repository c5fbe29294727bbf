"""AUP (d3LLM) on hand-made accuracy / parallelism tables, values worked out by hand."""

from __future__ import annotations

import math

import pytest

from dlmcore.errors import UserError
from harness.tasks.aup import AupError, aup, aup_points, weight


def test_weight_by_hand():
    assert weight(90.0, 90.0) == 1.0  # at the best accuracy: no discount
    assert weight(95.0, 90.0) == 1.0  # capped at 1
    assert weight(45.0, 90.0) == pytest.approx(math.exp(-1.5))  # half of y_max: e^(-3/2)
    assert weight(45.0, 90.0, alpha=1.0) == pytest.approx(math.exp(-0.5))
    assert weight(0.0, 0.0) == 1.0  # every method at 0 %: no weight needed


def test_hand_worked_table_with_a_dropped_point():
    # One method, points given out of order (ρ = tokens per forward, accuracy):
    #   (1, 0.80), (3, 0.76), (4, 0.70), (2, 0.78);  another method reached 0.90: y_max = 90 %.
    # Sorted by ρ: (1, 80), (2, 78), (3, 76), (4, 70) in percent. y_min = 80 − 5 = 75:
    # (4, 70) is dropped.
    # W(y) = min(exp(−3 (1 − y/90)), 1):
    #   W(80) = exp(−3·10/90) = exp(−1/3)  = 0.7165313
    #   W(78) = exp(−3·12/90) = exp(−0.4)  = 0.6703200
    #   W(76) = exp(−3·14/90) = exp(−7/15) = 0.6270891
    # AUP = 1·80                                        = 80
    #     + ½(2 − 1)(78·0.6703200 + 80·0.7165313)       = ½(52.284964 + 57.322505) = 54.803734
    #     + ½(3 − 2)(76·0.6270891 + 78·0.6703200)       = ½(47.658770 + 52.284964) = 49.971867
    #     = 184.775601
    res = aup_points([1, 3, 4, 2], [0.80, 0.76, 0.70, 0.78], y_max=0.90)
    assert res.aup == pytest.approx(184.775601, abs=1e-5)
    assert res.dropped == 1
    assert res.used == ((1.0, 0.80), (2.0, 0.78), (3.0, 0.76))
    assert res.index == (0, 3, 1)  # input positions of the used points, by ρ


def test_constant_best_accuracy_is_the_rectangle():
    # y = y_max everywhere: W = 1, AUP = 1·90 + ½·3·(90 + 90) = 360 = ρ_max · 90.
    assert aup([1, 4], [0.9, 0.9], 0.9) == pytest.approx(360.0)


def test_one_point_is_rho_times_accuracy_unweighted():
    # The first term is ρ_1·y_1 with no weight, even below y_max: 2.5 · 60 = 150.
    assert aup([2.5], [0.6], y_max=0.9) == pytest.approx(150.0)


def test_the_last_point_below_tolerance_is_dropped_not_an_error():
    # d3LLM's code asserts instead; here (8, 0.50) is dropped: AUP of (1, 0.9), (2, 0.9) only
    # = 1·90 + ½·1·(90 + 90) = 180.
    res = aup_points([1, 2, 8], [0.9, 0.9, 0.5], y_max=0.9)
    assert res.aup == pytest.approx(180.0) and res.dropped == 1
    # A drop of exactly 5 points is kept: y_min = 90 − 5 = 85; (2, 0.85) counts.
    # W(85) = exp(−3·5/90) = exp(−1/6); AUP = 90 + ½(90 + 85·exp(−1/6)).
    want = 90 + 0.5 * (90 + 85 * math.exp(-1 / 6))
    assert aup([1, 2], [0.9, 0.85], 0.9) == pytest.approx(want)


def test_y_min_is_relative_to_the_least_parallel_point_not_the_best():
    # y_1 = 0.60 at ρ = 1; a better point later (ρ = 2, 0.70) is kept; y_min = 55.
    # y_max = 0.70: W(60) = exp(−3/7), W(70) = 1.
    # AUP = 60 + ½(70 + 60·exp(−3/7)).
    want = 60 + 0.5 * (70 + 60 * math.exp(-3 / 7))
    assert aup([2, 1], [0.70, 0.60], 0.70) == pytest.approx(want)


def test_equal_parallelism_puts_the_higher_accuracy_first():
    # Two points at ρ = 1 (0.7 and 0.9): y_1 = 90 (in the input order 0.7 would be y_1 and
    # y_min 65). y_min = 85 drops 0.7; AUP = 1·90 + ½(2 − 1)(90 + 90) = 180 (y_max = 0.9).
    res = aup_points([1, 1, 2], [0.7, 0.9, 0.9], 0.9)
    assert res.used[0] == (1.0, 0.9) and res.dropped == 1
    assert res.aup == pytest.approx(180.0)
    # A tie that is kept adds a zero-width segment, i.e. nothing: (1, 0.9), (1, 0.88), (2, 0.9)
    # → 90 + ½·0·(…) + ½(2 − 1)(90 + 88·W(88)), W(88) = exp(−3·2/90).
    want = 90 + 0.5 * (90 + 88 * math.exp(-6 / 90))
    assert aup([1, 2, 1], [0.88, 0.9, 0.9], 0.9) == pytest.approx(want)


def test_more_parallelism_at_the_same_accuracy_scores_higher():
    slow = aup([1, 2], [0.8, 0.8], 0.8)
    fast = aup([1, 2, 4], [0.8, 0.8, 0.8], 0.8)
    assert fast > slow


@pytest.mark.parametrize(
    "tpf,acc,y_max,words",
    [
        ([], [], 0.5, "at least one"),
        ([1, 2], [0.5], 0.5, "one accuracy per TPF"),
        ([0, 1], [0.5, 0.5], 0.5, "> 0"),
        ([1, float("nan")], [0.5, 0.5], 0.5, "> 0"),
        ([1], [80.0], 90.0, "not percent"),
        ([1], [0.5], 1.5, "fractions in \\[0, 1\\]"),
    ],
)
def test_undefined_inputs_are_named(tpf, acc, y_max, words):
    with pytest.raises(AupError, match=words):
        aup(tpf, acc, y_max)
    assert issubclass(AupError, UserError)
