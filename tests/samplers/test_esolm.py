"""Eso-LM (B) and the interleaved sampler: exactness, NFE, distribution, bad input.

Oracles (measurement.md §6, §10):
* the uncached path (a plain causal forward over the π-sorted prefix) for the cached loop;
* the analytic E[len(K)] of algorithms.md §3.4 and paper Table 13 for the step counts;
* a hand-built fixed-logits model (``fake_models_b``) whose output distribution is known.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare
from torch.testing import assert_close

from dlmcore.configio import ConfigError, from_dict, to_dict
from samplers import SAMPLERS, SamplerError
from samplers.esolm import (
    EsoLMConfig,
    EsoLMSampler,
    expected_nfe,
    random_order,
    step_sizes,
)
from samplers.esolm_interleaved import EsoLMBlockConfig, EsoLMBlockSampler
from samplers.schedules import SCHEDULES
from tests.conftest import tiny_model
from tests.samplers.fake_models_b import Recorder, fixed_model, peaked_table

LOGLINEAR = SCHEDULES.get("loglinear")()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(sampler, model, b: int, L: int, seed: int):
    return sampler.sample(model, batch_size=b, seq_len=L, generator=gen(seed))


def esolm(**kw) -> EsoLMSampler:
    return EsoLMSampler(EsoLMConfig(**kw))


def block(**kw) -> EsoLMBlockSampler:
    return EsoLMBlockSampler(EsoLMBlockConfig(**kw))


# ---------------------------------------------------------------------------------------------
# Exactness: cached loop == uncached oracle (fp32 tiny DiT)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("alpha0", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("T", [1, 4, 16])
def test_esolm_cached_equals_uncached(b, alpha0, T):
    model = tiny_model("esolm")
    for seed in range(3):
        cached = run(esolm(num_steps=T, alpha0_eval=alpha0), model, b, 16, seed)
        oracle = run(esolm(num_steps=T, alpha0_eval=alpha0, kv_cache=False), model, b, 16, seed)
        assert torch.equal(cached.tokens, oracle.tokens), seed
        assert cached.nfe_denoise == oracle.nfe_denoise == len(cached.step_sizes)
        assert cached.step_sizes == oracle.step_sizes
        assert (cached.tokens != model.config.mask_id).all()


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("alpha0", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("S", [2, 4, 16])
def test_esolm_block_cached_equals_uncached(b, alpha0, S):
    model = tiny_model("esolm")
    for seed in range(2):
        for shuffle in (True, False):
            cfg = {"num_steps": S, "alpha0_eval": alpha0, "shuffle": shuffle}
            cached = run(block(**cfg), model, b, 16, seed)
            oracle = run(block(**cfg, kv_cache=False), model, b, 16, seed)
            assert torch.equal(cached.tokens, oracle.tokens), (seed, shuffle)
            assert cached.nfe_denoise == oracle.nfe_denoise


@pytest.mark.parametrize("alpha0", [1.0, 0.5])
def test_esolm_per_step_logits_equal_oracle(alpha0):
    """Every call's logits match the oracle's (the same tokens were fed before it)."""
    model = tiny_model("esolm", seed=3)
    rec_c, rec_u = Recorder(model), Recorder(model)
    run(esolm(num_steps=6, alpha0_eval=alpha0), rec_c, 2, 16, 5)
    run(esolm(num_steps=6, alpha0_eval=alpha0, kv_cache=False), rec_u, 2, 16, 5)
    assert len(rec_c.logits) == len(rec_u.logits) > 1
    for i, (got, want) in enumerate(zip(rec_c.logits, rec_u.logits)):
        assert_close(got, want, msg=lambda m, i=i: f"step {i}: {m}")


def test_esolm_cache_holds_clean_prefix_after_run():
    """Cache rows [0, L − k_last) equal a causal forward over the π-sorted final tokens."""
    model = tiny_model("esolm", seed=1)
    sampler = esolm(num_steps=5, alpha0_eval=0.5)
    plan = sampler.plan(model, batch_size=2, seq_len=16, generator=gen(0))
    out = sampler.execute(model, plan, generator=gen(1))
    n_c = 16 - plan.steps[-1]
    x_pi = torch.gather(out.tokens, 1, plan.order)  # (b, L) in π order
    kv = []
    model(x_pi[:, :n_c], positions=plan.order[:, :n_c], is_causal=True, kv_out=kv)
    for layer, (k, v) in enumerate(kv):
        assert_close(plan.cache.k[layer][:, :, :n_c], k)
        assert_close(plan.cache.v[layer][:, :, :n_c], v)


@pytest.mark.parametrize("make", [lambda: esolm(num_steps=4), lambda: block(num_steps=4)])
def test_execute_is_replayable(make):
    """The same plan and seed twice: identical tokens and calls (the cache is reset)."""
    model, sampler = tiny_model("esolm"), make()
    plan = sampler.plan(model, batch_size=2, seq_len=16, generator=gen(0))
    a = sampler.execute(model, plan, generator=gen(7))
    b = sampler.execute(model, plan, generator=gen(7))
    assert torch.equal(a.tokens, b.tokens) and a.calls == b.calls


# ---------------------------------------------------------------------------------------------
# The loop feeds what algorithms.md §3.4 says
# ---------------------------------------------------------------------------------------------


def test_cached_loop_feeds_last_commits_then_masks():
    """Call i feeds the k_{i−1} tokens committed last step (clean) followed by k_i masks."""
    L, V = 16, 9
    model = fixed_model("esolm", torch.randn(L, V))
    sampler = esolm(num_steps=6, alpha0_eval=0.5)
    plan = sampler.plan(model, batch_size=2, seq_len=L, generator=gen(3))
    out = sampler.execute(model, plan, generator=gen(4))
    x_pi = torch.gather(out.tokens, 1, plan.order)
    u, k_prev = 0, 0
    for call, k in zip(model.calls, plan.steps):
        assert call.method == "forward_cached" and call.head_rows == k
        assert torch.equal(call.fed[:, :k_prev], x_pi[:, u - k_prev : u])
        assert (call.fed[:, k_prev:] == V - 1).all() and call.fed.shape[1] == k_prev + k
        assert torch.equal(call.positions, plan.order[:, u - k_prev : u + k])
        u, k_prev = u + k, k


def test_sequential_tail_is_left_to_right():
    order = random_order(4, 32, 20, gen(0))
    assert len({tuple(row.tolist()) for row in order}) == 4  # one π per sample
    for row in order:
        assert sorted(row.tolist()) == list(range(32))
        assert torch.equal(row[20:], row[20:].sort().values)


@pytest.mark.parametrize("alpha0", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("S", [4, 8])
@pytest.mark.parametrize("shuffle", [True, False])
def test_interleaved_order_and_steps(alpha0, S, shuffle):
    """Each diffusion step decodes one group {r, r+S, …}; the tail is ascending, one per step."""
    L = 32
    sampler = block(num_steps=S, alpha0_eval=alpha0, shuffle=shuffle)
    plan = sampler.plan(tiny_model("esolm"), batch_size=2, seq_len=L, generator=gen(1))
    g, n_groups = L // S, math.floor(S * alpha0)
    assert plan.steps == [g] * n_groups + [1] * (L - n_groups * g)
    assert torch.equal(plan.order[0], plan.order[1])  # shared by the batch
    pi = plan.order[0]
    residues = [int(pi[i * g]) % S for i in range(n_groups)]
    for i in range(n_groups):
        grp = pi[i * g : (i + 1) * g]
        assert (grp % S == residues[i]).all()
        if not shuffle:
            assert torch.equal(grp, torch.arange(i, L, S))
    assert len(set(residues)) == n_groups
    assert torch.equal(pi[n_groups * g :], pi[n_groups * g :].sort().values)
    assert sorted(pi.tolist()) == list(range(L))
    assert (
        sampler.expected_calls(None, batch_size=2, seq_len=L)
        == run(sampler, tiny_model("esolm"), 2, L, 1).calls
    )


# ---------------------------------------------------------------------------------------------
# NFE and work counters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 3, 16, 64, 1024])
@pytest.mark.parametrize("alpha0", [1.0, 0.5, 0.0])
def test_token_forwards_is_2L_minus_k_last(T, alpha0):
    """Cached: Σ(k_prev + k) = 2L − k_last for every T; uncached: Σ(u + k)."""
    L = 32
    model = fixed_model("esolm", torch.randn(L, 7))
    out = run(esolm(num_steps=T, alpha0_eval=alpha0), model, 2, L, T)
    K = out.step_sizes
    assert sum(K) == L and out.nfe_denoise == out.nfe_total == len(K)
    assert out.token_forwards == 2 * L - K[-1]
    if alpha0 == 1.0 and T == 1:
        assert K == [L]
    if alpha0 == 0.0:
        assert K == [1] * L
    unc = run(esolm(num_steps=T, alpha0_eval=alpha0, kv_cache=False), model, 2, L, T)
    assert unc.step_sizes == K
    assert unc.token_forwards == sum(sum(K[: i + 1]) for i in range(len(K)))


@pytest.mark.parametrize("T,alpha0", [(8, 1.0), (64, 1.0), (16, 0.5), (128, 0.25)])
def test_nfe_matches_analytic_expectation(T, alpha0):
    """Mean len(K) over 200 plans within 5 standard errors of E[len(K)] (p_fail < 1e-6).

    The standard deviation is floored at 0.05: with T = 8 nearly every plan has exactly 8 steps
    (E = 7.998), and a sample std of 0 would otherwise demand equality with the expectation.
    """
    L = 64
    nfe = torch.tensor(
        [len(step_sizes(LOGLINEAR, L, T, gen(s), alpha0)[0]) for s in range(200)],
        dtype=torch.float64,
    )
    want = expected_nfe(LOGLINEAR, L, T, alpha0)
    tol = 5 * max(nfe.std().item(), 0.05) / math.sqrt(len(nfe))
    assert abs(nfe.mean().item() - want) <= tol, (nfe.mean(), want, tol)


# Paper Table 13 (algorithms.md §3.4): NFE at L = 1024.
TABLE_13 = [
    (1.0, 16, 16),
    (1.0, 32, 32),
    (1.0, 64, 64),
    (1.0, 128, 128),
    (1.0, 256, 251),
    (1.0, 1024, 646),
    (1.0, 4096, 906),
    (0.5, 16, 529),
    (0.5, 128, 639),
    (0.5, 1024, 913),
    (0.25, 16, 784),
    (0.25, 128, 879),
    (0.25, 1024, 994),
    (0.0625, 16, 976),
    (0.0625, 128, 1010),
    (0.0625, 1024, 1022),
]


def test_schedule_counts_reproduce_paper_table_13():
    """Step counts only (no network), L = 1024, 12 plans per row.

    * The sample mean of len(K) lies within 5 standard errors (+0.5 for rows whose NFE is
      deterministic) of the analytic expectation: p_fail < 1e-6 per row under the normal
      approximation.
    * The paper's single measured value lies within 4 single-run standard deviations (+1) of
      the expectation (it is one draw of the same random variable).
    """
    L = 1024
    for alpha0, T, paper in TABLE_13:
        nfe = torch.tensor(
            [len(step_sizes(LOGLINEAR, L, T, gen(s), alpha0)[0]) for s in range(12)],
            dtype=torch.float64,
        )
        want = expected_nfe(LOGLINEAR, L, T, alpha0)
        sd = nfe.std().item()
        assert abs(nfe.mean().item() - want) <= 5 * sd / math.sqrt(len(nfe)) + 0.5, (
            alpha0,
            T,
            nfe.mean(),
            want,
        )
        assert abs(paper - want) <= 4 * sd + 1.0, (alpha0, T, paper, want, sd)
    # The α0 = 1 rows are T(1 − (1 − 1/T)^L) (646–647.5 at T = 1024).
    assert abs(expected_nfe(LOGLINEAR, L, 1024, 1.0) - 1024 * (1 - (1 - 1 / 1024) ** L)) < 1e-6


def test_nfe_expected_and_expected_calls_are_reported():
    model = tiny_model("esolm")
    sampler = esolm(num_steps=8, alpha0_eval=0.5)
    out = run(sampler, model, 2, 16, 0)
    assert out.info["nfe_expected"] == pytest.approx(expected_nfe(LOGLINEAR, 16, 8, 0.5))
    n_seq = 16 - out.info["n_mdm"]
    assert n_seq > 0 and out.step_sizes[len(out.step_sizes) - n_seq :] == [1] * n_seq
    exp = sampler.expected_calls(model.config, batch_size=2, seq_len=16)
    assert sum(c[0] for c in exp) == 32 - exp[-1][3]  # token-forwards identity holds too
    assert abs(len(exp) - out.info["nfe_expected"]) <= 1


# ---------------------------------------------------------------------------------------------
# Distribution (fixed-logits model)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize(
    "make",
    [
        lambda kv: esolm(num_steps=5, alpha0_eval=0.5, kv_cache=kv),
        lambda kv: block(num_steps=4, alpha0_eval=0.5, kv_cache=kv),
    ],
)
def test_tokens_land_at_their_natural_positions(make, kv_cache):
    """Position r's logits put all mass on token r mod (V−1): output must be exactly that.

    Checks π, the rotary gather (positions ride in the fake tables) and the un-permutation.
    """
    L, V = 24, 11
    model = fixed_model("esolm", peaked_table(L, V))
    out = run(make(kv_cache), model, 3, L, 2)
    assert torch.equal(out.tokens, (torch.arange(L) % (V - 1)).expand(3, L))


@pytest.mark.parametrize("top_p,temperature", [(1.0, 1.0), (0.6, 1.0), (1.0, 0.5)])
def test_tokens_follow_the_model_distribution(top_p, temperature):
    """Fixed logits ℓ (mask id last): every token ~ softmax(ℓ/τ) restricted to the nucleus.

    Pearson χ² over 40 × 32 tokens; the test fails when p < 1e-6, so p_fail = 1e-6.
    """
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0, 9.0])  # id 5 = mask: never sampled
    model = fixed_model("esolm", logits)
    out = run(
        esolm(num_steps=7, alpha0_eval=0.5, top_p=top_p, temperature=temperature), model, 40, 32, 11
    )
    p = torch.softmax(logits[:5].double() / temperature, -1)
    if top_p < 1:  # hf: keep the smallest prefix reaching top_p (here ids 3 and 0)
        keep = torch.zeros(5, dtype=torch.bool)
        keep[[3, 0]] = True
        assert p[3] < top_p <= p[3] + p[0]
        p = torch.where(keep, p, 0.0)
        p = p / p.sum()
    counts = torch.bincount(out.tokens.flatten(), minlength=6).double()
    assert counts[5] == 0 and counts[:5][p == 0].sum() == 0
    support = p > 0
    n = counts.sum()
    assert chisquare(counts[:5][support], (p[support] * n)).pvalue > 1e-6


# ---------------------------------------------------------------------------------------------
# Profile mode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize("name", ["esolm", "esolm_block"])
def test_profile_mode_issues_the_same_calls(name, kv_cache):
    model = tiny_model("esolm")
    cls = SAMPLERS.get(name)
    full_s = cls(cls.config_class(num_steps=4, alpha0_eval=0.5, kv_cache=kv_cache))
    prof_s = cls(cls.config_class(num_steps=4, alpha0_eval=0.5, kv_cache=kv_cache, profile=True))
    plan = full_s.plan(model, batch_size=2, seq_len=16, generator=gen(0))
    rf, rp = Recorder(model), Recorder(model)
    full = full_s.execute(rf, plan, generator=gen(1))
    prof = prof_s.execute(rp, plan, generator=gen(1))
    assert rf.log == rp.log and full.calls == prof.calls
    assert (full.nfe_total, full.token_forwards) == (prof.nfe_total, prof.token_forwards)
    assert (prof.tokens == model.config.mask_id).all()  # placeholders: nothing sampled
    assert prof.info["profile"] is True


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_config_problems_are_reported_together():
    with pytest.raises(ConfigError) as err:
        esolm(num_steps=0, alpha0_eval=1.5, top_p=0.0, schedule="loglinaer")
    msg = str(err.value)
    assert "'num_steps' is 0" in msg and "'alpha0_eval' is 1.5" in msg
    assert "'top_p' is 0.0" in msg and "Did you mean: loglinear" in msg
    with pytest.raises(ConfigError, match="'alpha0_eval' is -0.1"):
        block(alpha0_eval=-0.1)


def test_config_round_trip_and_yaml_errors():
    cfg = EsoLMConfig(num_steps=64, alpha0_eval=0.25)
    assert from_dict(EsoLMConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="Did you mean: alpha0_eval"):
        from_dict(EsoLMConfig, {"alpha_0_eval": 0.5})
    with pytest.raises(ConfigError, match="'top_p_convention' is 'hff'"):
        from_dict(EsoLMBlockConfig, {"top_p_convention": "hff"})


def test_wrong_family_and_bad_sizes_are_clear_errors():
    with pytest.raises(SamplerError, match="needs a model of family esolm.*'mdlm'"):
        run(esolm(), tiny_model("mdlm"), 1, 16, 0)
    with pytest.raises(SamplerError, match="'num_steps' 5 must divide seq_len 16"):
        run(block(num_steps=5), tiny_model("esolm"), 1, 16, 0)
    with pytest.raises(SamplerError, match="'num_steps' 32 must divide seq_len 16"):
        run(block(num_steps=32), tiny_model("esolm"), 1, 16, 0)
    with pytest.raises(SamplerError, match="batch_size is 0"):
        run(esolm(), tiny_model("esolm"), 0, 16, 0)


# ---------------------------------------------------------------------------------------------
# Schedules that leave tokens behind at α0 = 1 (the extra step of algorithms.md §3.4)
# ---------------------------------------------------------------------------------------------


class ShortSchedule:
    """α_t = 0.6·(1 − t): the walk leaves ≈ 40 % of the tokens masked at t = 0."""

    name = "test_short"

    def alpha(self, t):
        return 0.6 * (1.0 - torch.as_tensor(t, dtype=torch.float64))

    def counts(self, n_tokens, num_steps, generator, alpha0=1.0):
        from samplers.schedules import binomial_counts

        return binomial_counts(self, n_tokens, num_steps, generator, alpha0)


@pytest.fixture
def short_schedule():
    SCHEDULES.add("test_short", ShortSchedule)
    yield ShortSchedule()
    SCHEDULES.remove("test_short")


def test_leftover_tokens_take_one_extra_step_at_alpha0_one(short_schedule):
    """α0 = 1: the leftovers are one extra step; mean len(K) over 200 plans matches the
    expectation Σ[1 − (1 − q_i)^L] + 1 − (Σq)^L within 5 standard errors (p_fail < 1e-6)."""
    L, T = 32, 8
    lens = []
    for s in range(200):
        K, n_mdm = step_sizes(short_schedule, L, T, gen(s), 1.0)
        assert sum(K) == L == n_mdm and len(K) <= T + 1
        lens.append(len(K))
    lens = torch.tensor(lens, dtype=torch.float64)
    want = expected_nfe(short_schedule, L, T, 1.0)
    assert abs(lens.mean().item() - want) <= 5 * lens.std().item() / math.sqrt(len(lens))
    model = tiny_model("esolm")
    out = run(esolm(num_steps=T, schedule="test_short"), model, 2, L, 0)
    assert (out.tokens != model.config.mask_id).all() and out.info["n_mdm"] == L
