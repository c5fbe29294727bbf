"""Schedules and policies: the laws they draw from, exact deterministic counts, construction from
config values, adding a schedule in ~20 lines, and plugins through entry points.
"""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch
from scipy import stats

from dlmcore.configio import ConfigError, from_dict
from samplers import POLICIES, SAMPLERS, SCHEDULES
from samplers import schedules as sch
from samplers.mdlm_ancestral import MDLMConfig
from samplers.schedules import binomial_counts, build, step_probabilities
from tests.samplers.test_contract import check_result, check_schedule_contract, run

P_FAIL = 1e-5


def telescoped_law(schedule, T: int, alpha0: float = 1.0) -> torch.Tensor:
    """Oracle: P(step i) = α0(α(s_i) − α(t_i))/(1 − α0 α(1)); P(never) = (1 − α0 α(0))/(…)."""
    t = torch.tensor([1 - i / T for i in range(T)], dtype=torch.float64)
    a = lambda u: alpha0 * schedule.alpha(u)  # noqa: E731
    denom = 1 - a(torch.tensor(1.0, dtype=torch.float64))
    steps = (a(t - 1 / T) - a(t)) / denom
    never = (1 - a(torch.tensor(0.0, dtype=torch.float64))) / denom
    return torch.cat([steps, never.reshape(1)])


@pytest.mark.parametrize("name", ["loglinear", "cosine"])
@pytest.mark.parametrize("alpha0", [1.0, 0.5])
def test_step_probabilities_match_the_telescoped_walk(name, alpha0):
    s = SCHEDULES.get(name)()
    torch.testing.assert_close(step_probabilities(s, 7, alpha0), telescoped_law(s, 7, alpha0))


def test_loglinear_steps_are_uniform():
    p = step_probabilities(SCHEDULES.get("loglinear")(), 16)
    torch.testing.assert_close(p[:-1], torch.full((16,), 1 / 16, dtype=torch.float64))
    assert float(p[-1]) < 1e-12


@pytest.mark.parametrize("name", ["loglinear", "cosine"])
def test_binomial_counts_follow_the_walk_law(name):
    """Pooled over 400 draws of n = 50 tokens, step histograms are Multinomial(20 000, P).

    Chi-square with T = 8 steps (7 dof) at level 1e-5: false-failure probability 1e-5.
    """
    s, T, n, draws = SCHEDULES.get(name)(), 8, 50, 400
    g = torch.Generator().manual_seed(0)
    total = torch.zeros(T, dtype=torch.float64)
    for _ in range(draws):
        c = binomial_counts(s, n, T, g)
        assert sum(c) == n
        total += torch.tensor(c, dtype=torch.float64)
    expected = telescoped_law(s, T)[:-1] * n * draws
    chi2 = float(((total - expected) ** 2 / expected).sum())
    assert chi2 < stats.chi2.isf(P_FAIL, T - 1), (total, expected)


def test_alpha0_leaves_the_sequential_share():
    """With α0 = 0.5, Σcounts ~ Binomial(n, 0.5 (1 − ε)/(1 − 0.5 ε)); mean over 300 draws of n = 64
    within 4.5σ: false-failure probability < 1e-5.
    """
    s, n, draws = SCHEDULES.get("loglinear")(), 64, 300
    g = torch.Generator().manual_seed(1)
    totals = [sum(binomial_counts(s, n, 10, g, alpha0=0.5)) for _ in range(draws)]
    p = float(1 - telescoped_law(s, 10, 0.5)[-1])
    mean, sd = n * p, math.sqrt(n * p * (1 - p) / draws)
    assert abs(sum(totals) / draws - mean) < 4.5 * sd


def test_deterministic_counts_are_exact():
    g = torch.Generator()
    assert SCHEDULES.get("linear")().counts(16, 5, g) == [3, 3, 4, 3, 3]  # round(16 i/5) steps
    assert SCHEDULES.get("linear")().counts(3, 6, g) == [1, 0, 1, 0, 1, 0]  # halves round up
    assert SCHEDULES.get("even")().counts(16, 5, g) == [4, 3, 3, 3, 3]
    assert SCHEDULES.get("even")().counts(3, 6, g) == [1, 1, 1, 0, 0, 0]
    assert SCHEDULES.get("even")().counts(16, 4, g, alpha0=0.5) == [2, 2, 2, 2]
    assert SCHEDULES.get("linear")().counts(16, 4, g, alpha0=0.5) == [2, 2, 2, 2]


def test_cosine_alpha_formula():
    t = torch.tensor([0.0, 1 / 3, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(SCHEDULES.get("cosine")().alpha(t), torch.cos(math.pi * t / 2))


# ---- policies on hand-built confidences ---------------------------------------------------------


def test_left_to_right_takes_the_leftmost_masks():
    masked = torch.tensor([[False, True, True, False, True]])
    sel = POLICIES.get("left_to_right")().select(None, masked, torch.tensor([2]), None)
    assert sel.tolist() == [[False, True, True, False, False]]


def test_confidence_takes_the_most_confident():
    conf = torch.tensor([[0.9, 0.2, 0.7, 0.95, 0.4]], dtype=torch.float64)
    masked = torch.tensor([[False, True, True, True, True]])
    sel = POLICIES.get("confidence")().select(conf, masked, torch.tensor([2]), None)
    assert sel.tolist() == [[False, False, True, True, False]]


def test_threshold_commits_above_tau_and_at_least_one():
    conf = torch.tensor([[0.95, 0.2, 0.91, 0.5], [0.3, 0.2, 0.1, 0.5]], dtype=torch.float64)
    masked = torch.ones(2, 4, dtype=torch.bool)
    sel = build(POLICIES, "policy", "threshold", threshold=0.9).select(
        conf, masked, torch.tensor([0, 0]), None
    )
    assert sel.tolist() == [[True, False, True, False], [False, False, False, True]]


# ---- construction from config values ------------------------------------------------------------


def test_build_reports_unknown_names_and_parameters():
    with pytest.raises(ValueError, match="Did you mean: loglinear"):
        build(SCHEDULES, "schedule", "loglinaer")
    msg = "'policy_threshold' is 0.5.*takes no 'threshold'.*threshold"
    with pytest.raises(ValueError, match=msg):
        build(POLICIES, "policy", "random", threshold=0.5)
    with pytest.raises(ValueError, match="threshold τ is 1.5; it must lie in"):
        build(POLICIES, "policy", "threshold", threshold=1.5)
    assert build(POLICIES, "policy", "threshold", threshold=None).threshold == 0.9


# ---- a new schedule in ~20 lines ---------------------------------------------------------------


def test_a_new_schedule_takes_twenty_lines_and_runs_through_mdlm():
    @SCHEDULES.register("sqrt_test")
    class Sqrt:
        """α_t = 1 − √t: many tokens early."""

        name = "sqrt_test"

        def alpha(self, t):
            return 1.0 - torch.as_tensor(t, dtype=torch.float64).sqrt()

        def counts(self, n_tokens, num_steps, generator, alpha0=1.0):
            return binomial_counts(self, n_tokens, num_steps, generator, alpha0)

    try:
        check_schedule_contract(Sqrt())
        cfg = from_dict(MDLMConfig, {"num_steps": 8, "schedule": "sqrt_test"})
        result = run(SAMPLERS.get("mdlm")(cfg), seed=2)
        check_result(result)
        assert 1 <= result.nfe_total <= 8
    finally:
        SCHEDULES.remove("sqrt_test")
    with pytest.raises(ConfigError, match="Unknown schedule 'sqrt_test'"):
        from_dict(MDLMConfig, {"schedule": "sqrt_test"})


# ---- plugins through entry points --------------------------------------------------------------


def fake_entry_points(monkeypatch, *specs):
    eps = [importlib.metadata.EntryPoint(name=n, value=v, group=g) for g, n, v in specs]
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group=None: [e for e in eps if e.group == group]
    )


def test_entry_point_plugin_is_registered(monkeypatch):
    fake_entry_points(
        monkeypatch,
        ("dlmbench.schedules", "square_plugin", "tests.samplers.plugin_example:SquareSchedule"),
    )
    try:
        assert sch.load_entry_points() == ["dlmbench.schedules:square_plugin"]
        check_schedule_contract(SCHEDULES.get("square_plugin")())
    finally:
        SCHEDULES.remove("square_plugin")


def test_broken_plugins_are_all_reported(monkeypatch):
    fake_entry_points(
        monkeypatch,
        ("dlmbench.schedules", "ghost", "tests.samplers.no_such_module:Ghost"),
        ("dlmbench.schedules", "no_counts", "tests.samplers.plugin_example:NoCounts"),
        ("dlmbench.schedules", "loglinear", "tests.samplers.plugin_example:SquareSchedule"),
    )
    with pytest.raises(sch.PluginError) as err:
        sch.load_entry_points()
    msg = str(err.value)
    assert msg.startswith("3 dlmbench plugin(s) could not be loaded")
    assert "plugin 'ghost = tests.samplers.no_such_module:Ghost'" in msg
    assert "ModuleNotFoundError" in msg
    assert "'no_counts" in msg and "has no method counts" in msg
    assert "registered twice" in msg and "pip uninstall" in msg
    assert "no_counts" not in SCHEDULES and SCHEDULES.get("loglinear") is sch.LogLinear
