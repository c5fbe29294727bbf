"""MDLM ancestral (``mdlm``) and first-hitting (``mdlm_first_hitting``): NFE against its analytic
law, the no-change cache, profile mode, count-based policies on hand-built logits, bad input.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from dlmcore.configio import ConfigError, from_dict
from samplers import SCHEDULES, SamplerError
from samplers.mdlm_ancestral import MDLMAncestral, MDLMConfig
from samplers.mdlm_first_hitting import MDLMFirstHitting
from samplers.schedules import binomial_counts
from tests.conftest import tiny_model
from tests.samplers.fakes import FixedLogitsModel, position_table

V = 6
MASK = V - 1
Z = 4.42  # two-sided normal quantile for 1e-5


def nfe_law(T: int, n: int) -> tuple[float, float]:
    """Mean and variance of the number of non-empty steps when n tokens pick uniform steps.

    E = T(1 − q₁), Var = T q₁(1 − q₁) + T(T − 1)(q₂ − q₁²), q_k = (1 − k/T)^n.
    """
    q1, q2 = (1 - 1 / T) ** n, (1 - 2 / T) ** n
    return T * (1 - q1), T * q1 * (1 - q1) + T * (T - 1) * (q2 - q1 * q1)


def fake(L: int = 16, seed: int = 0) -> FixedLogitsModel:
    return FixedLogitsModel(position_table(L, V, seed=seed))


def run(sampler, model, b: int, L: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return sampler.sample(model, batch_size=b, seq_len=L, generator=gen)


# ---- NFE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "T", "runs"), [(1, 16, 300), (16, 64, 200)])
def test_mdlm_nfe_matches_the_no_change_cache_law(b, T, runs):
    """Mean NFE over ``runs`` seeds within 4.42 standard errors of T(1 − (1 − 1/T)^(bL)).

    False-failure probability ≈ 1e-5 (normal approximation of the mean of ≥ 200 runs).
    """
    L = 16
    sampler, model = MDLMAncestral(MDLMConfig(num_steps=T)), fake(L)
    nfe = [run(sampler, model, b, L, seed).nfe_denoise for seed in range(runs)]
    mean, var = nfe_law(T, b * L)
    assert abs(sum(nfe) / runs - mean) < Z * math.sqrt(var / runs), (sum(nfe) / runs, mean)
    info = run(sampler, model, b, L, 0).info
    assert info["nfe_expected"] == pytest.approx(T * (1 - (1 - 1 / T) ** (b * L)), rel=1e-12)
    assert info["nfe_expected_per_sequence"] == pytest.approx(T * (1 - (1 - 1 / T) ** L), rel=1e-12)


def test_profile_simulation_is_single_sequence():
    """At b = 16 the profile count follows the per-sequence law T(1 − (1 − 1/T)^L) (200 plans,
    4.42 standard errors: false-failure ≈ 1e-5), and profile mode makes exactly that many calls.
    """
    L, T, b, runs = 16, 64, 16, 200
    sampler = MDLMAncestral(MDLMConfig(num_steps=T))
    profiler = MDLMAncestral(MDLMConfig(num_steps=T, profile=True))
    model = fake(L)
    sims = []
    for seed in range(runs):
        gen = torch.Generator().manual_seed(seed)
        plan = sampler.plan(model, batch_size=b, seq_len=L, generator=gen)
        sims.append(plan.info["nfe_profile_sim"])
    mean, var = nfe_law(T, L)
    assert abs(sum(sims) / runs - mean) < Z * math.sqrt(var / runs)
    model.calls.clear()
    prof = run(profiler, model, b, L, seed=7)
    assert len(model.calls) == prof.nfe_total == prof.info["nfe_profile_sim"]
    assert prof.nfe_total <= run(sampler, model, b, L, seed=7).nfe_total
    assert bool((prof.tokens == MASK).all()), "profile mode writes no tokens"


def test_a_call_happens_only_after_a_change():
    """The no-change cache: consecutive network inputs differ somewhere in the batch, masks only
    decrease, and a call is made for every grid step at which some row unmasks a token.
    """
    L, T, b = 16, 32, 4
    model = fake(L)
    sampler = MDLMAncestral(MDLMConfig(num_steps=T))
    gen = torch.Generator().manual_seed(3)
    plan = sampler.plan(model, batch_size=b, seq_len=L, generator=gen)
    result = sampler.execute(model, plan, generator=gen)
    inputs = [c[3] for c in model.calls]
    assert len(inputs) == result.nfe_total == len(set(plan.commit_step.flatten().tolist()))
    assert bool((inputs[0] == MASK).all())
    masks = [int((x == MASK).sum()) for x in inputs] + [int((result.tokens == MASK).sum())]
    assert all(m1 > m2 for m1, m2 in zip(masks, masks[1:])), masks
    for before, after in zip(inputs, inputs[1:]):
        kept = before != MASK
        assert torch.equal(after[kept], before[kept]), "a committed token changed"


def test_first_hitting_unmasks_one_token_per_row_per_call():
    L, b = 12, 5
    model = fake(L)
    result = run(MDLMFirstHitting(), model, b, L, seed=0)
    assert result.nfe_denoise == result.nfe_total == L == len(model.calls)
    masks = torch.stack([(c[3] == MASK).sum(-1) for c in model.calls])  # (L, b)
    assert torch.equal(masks, (L - torch.arange(L))[:, None].expand(L, b))
    assert not (result.tokens == MASK).any()


def test_first_hitting_position_is_uniform():
    """The first position unmasked is uniform over L = 8 (4000 rows, chi-square 7 dof at 1e-5)."""
    L, b = 8, 4000
    model = fake(L)
    run(MDLMFirstHitting(), model, b, L, seed=1)
    first = (model.calls[1][3] != MASK).float().argmax(-1)
    observed = torch.bincount(first, minlength=L).double()
    chi2 = float(((observed - b / L) ** 2 / (b / L)).sum())
    assert chi2 < stats.chi2.isf(1e-5, L - 1)


# ---- count-based policies on hand-built logits ------------------------------------------------


def peaked(L: int, peaks: list[float]) -> FixedLogitsModel:
    """Position p puts logit peaks[p] on id p % 5 and 0 elsewhere (mask logit 20, removed)."""
    table = torch.zeros(L, V)
    for p, c in enumerate(peaks):
        table[p, p % 5] = c
    table[:, MASK] = 20.0
    return FixedLogitsModel(table)


def committed(model) -> list[list[int]]:
    """Per call, the positions of row 0 already committed in its input."""
    return [(c[3][0] != MASK).nonzero().flatten().tolist() for c in model.calls]


def test_left_to_right_even_commits_k_leftmost_per_step():
    L, T = 8, 4
    model = fake(L)
    cfg = MDLMConfig(num_steps=T, schedule="even", policy="left_to_right")
    result = run(MDLMAncestral(cfg), model, 2, L, seed=0)
    assert committed(model) == [list(range(2 * j)) for j in range(T)]
    assert result.step_sizes == [2.0] * T and result.nfe_total == T


def test_confidence_commits_most_confident_first():
    """Position p's top token has probability 1/(1 + 4e^-(20+p)), increasing in p, so positions are
    committed right to left. A non-top draw (prob. < 4e^-20 each) would break it: p < 1e-7.
    """
    L = 8
    model = peaked(L, [20.0 + p for p in range(L)])
    cfg = MDLMConfig(num_steps=L, schedule="even", policy="confidence")
    run(MDLMAncestral(cfg), model, 2, L, seed=0)
    assert committed(model) == [list(range(L - j, L)) for j in range(L)]


def test_threshold_commits_everything_confident_at_once():
    """Positions 0–3 are near-certain (> τ = 0.9), 4–7 uniform (0.2): one call commits 0–3, then
    one position per call: NFE = 5 < T = 8, step sizes [4, 1, 1, 1, 1].
    """
    L = 8
    model = peaked(L, [30.0] * 4 + [0.0] * 4)
    cfg = MDLMConfig(num_steps=L, schedule="even", policy="threshold", policy_threshold=0.9)
    result = run(MDLMAncestral(cfg), model, 2, L, seed=0)
    assert result.nfe_total == 5 and result.step_sizes == [4.0, 1.0, 1.0, 1.0, 1.0]
    assert committed(model)[1] == [0, 1, 2, 3]
    assert result.tokens[:, :4].tolist() == [[0, 1, 2, 3]] * 2
    assert result.info["nfe_expected"] != result.info["nfe_expected"]  # NaN: model-dependent


def test_tiny_dit_runs_every_policy():
    model = tiny_model("mdlm")
    for policy in ("random", "left_to_right", "confidence", "threshold"):
        cfg = MDLMConfig(num_steps=6, schedule="cosine", policy=policy)
        result = run(MDLMAncestral(cfg), model, 3, 16, seed=0)
        assert not (result.tokens == model.config.mask_id).any()
        assert result.nfe_total <= 6


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_steps": 0}, "'num_steps' is 0; it must be >= 1"),
        ({"top_p": 1.5}, "'top_p' is 1.5; it must lie in (0, 1]"),
        ({"top_p": 0.0}, "'top_p' is 0.0"),
        ({"schedule": "cosin"}, "Unknown schedule 'cosin'. Did you mean: cosine?"),
        ({"policy": "confidense"}, "Did you mean: confidence?"),
        ({"policy_threshold": 0.8}, "'policy_threshold' is 0.8, but unmasking policy 'random'"),
        ({"policy": "threshold", "policy_threshold": 1.5}, "threshold τ is 1.5"),
        ({"policy": "threshold", "profile": True}, "policy 'threshold' is adaptive"),
        ({"top_p_convention": "nucleus"}, "'top_p_convention' is 'nucleus'"),
    ],
)
def test_bad_config_is_refused_with_the_value(changes, message):
    with pytest.raises(ConfigError) as err:
        from_dict(MDLMConfig, changes)
    assert message in str(err.value)


def test_every_problem_reported_at_once():
    with pytest.raises(ConfigError) as err:
        MDLMAncestral(MDLMConfig(num_steps=-1, schedule="nope", top_p=2.0))
    assert len(err.value.problems) == 3


def test_schedule_whose_counts_do_not_sum_is_named():
    @SCHEDULES.register("leaky_test")
    class Leaky:
        name = "leaky_test"

        def alpha(self, t):
            return 1.0 - torch.as_tensor(t, dtype=torch.float64)

        def counts(self, n_tokens, num_steps, generator, alpha0=1.0):
            return binomial_counts(self, n_tokens - 1, num_steps, generator, alpha0)

    try:
        msg = "schedule 'leaky_test' returned 4 counts summing to 15"
        with pytest.raises(SamplerError, match=msg):
            run(MDLMAncestral(MDLMConfig(num_steps=4, schedule="leaky_test")), fake(16), 1, 16, 0)
    finally:
        SCHEDULES.remove("leaky_test")
