"""BD3-LM block sampler: exactness of both caches, NFE, distribution, policies, bad input.

Oracles (measurement.md §6, §10):
* the uncached path ([prefix ; block] under the block-causal mask) for both cache styles;
* the per-block NFE expectation Σ_blocks [T′(1 − (1 − 1/T′)^(b·n_j)) + 1] (published-numbers.md
  §3.3, batch version) and the exact first-hitting count (L − 1) + L/L′;
* a hand-built fixed-logits model (``fake_models_b``) whose output distribution is known.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare
from torch.testing import assert_close

from dlmcore.configio import ConfigError, from_dict, to_dict
from harness.model.network import block_causal_mask
from samplers import SamplerError
from samplers.bd3lm_block import (
    BD3LMConfig,
    BD3LMSampler,
    block_counts,
    expected_denoise_calls,
    masked_per_block,
    reveal_probabilities,
)
from samplers.schedules import POLICIES, SCHEDULES, _top_k_mask
from tests.conftest import tiny_model
from tests.samplers.fake_models_b import Recorder, fixed_model, peaked_table

LOGLINEAR = SCHEDULES.get("loglinear")()
BOS = 0


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bd3(**kw) -> BD3LMSampler:
    return BD3LMSampler(BD3LMConfig(**kw))


def run(sampler, model, b: int, L: int, seed: int):
    return sampler.sample(model, batch_size=b, seq_len=L, generator=gen(seed))


# ---------------------------------------------------------------------------------------------
# Exactness: efficient and reference caches == uncached oracle (fp32 tiny DiT)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("blk", [1, 2, 4, 8])
@pytest.mark.parametrize("mode,steps", [("ancestral", 2), ("ancestral", 5), ("first_hitting", 1)])
def test_caches_equal_uncached_oracle(b, blk, mode, steps):
    model = tiny_model("bd3lm", bos_index=BOS)
    for seed in range(2):
        outs = {
            cache: run(
                bd3(block_size=blk, steps_per_block=steps, mode=mode, cache=cache),
                model,
                b,
                16,
                seed,
            )
            for cache in ("efficient", "reference", "none")
        }
        oracle = outs["none"]
        assert (oracle.tokens[:, 0] == BOS).all() and (oracle.tokens != 32).all()
        for cache in ("efficient", "reference"):
            assert torch.equal(outs[cache].tokens, oracle.tokens), (cache, seed)
            assert outs[cache].nfe_denoise == oracle.nfe_denoise
            assert outs[cache].nfe_total == oracle.nfe_total + 16 // blk


@pytest.mark.parametrize("cache", ["efficient", "reference"])
def test_per_step_logits_equal_oracle(cache):
    model = tiny_model("bd3lm", seed=2, block_size=4)
    rec, ora = Recorder(model), Recorder(model)
    run(bd3(block_size=4, steps_per_block=3, cache=cache), rec, 2, 16, 3)
    run(bd3(block_size=4, steps_per_block=3, cache="none"), ora, 2, 16, 3)
    assert len(rec.logits) == len(ora.logits) > 4
    for i, (got, want) in enumerate(zip(rec.logits, ora.logits)):
        assert_close(got, want, msg=lambda m, i=i: f"call {i}: {m}")


def test_efficient_cache_holds_the_clean_sequence_after_run():
    """After the last store pass, cache rows [0, L) equal a block-causal forward of x."""
    model = tiny_model("bd3lm", seed=4)
    sampler = bd3(block_size=4, steps_per_block=2)
    plan = sampler.plan(model, batch_size=2, seq_len=16, generator=gen(0))
    out = sampler.execute(model, plan, generator=gen(1))
    kv = []
    model(out.tokens, attn_mask=block_causal_mask(16, 4), kv_out=kv)
    for layer, (k, v) in enumerate(kv):
        assert_close(plan.cache.k[layer], k)
        assert_close(plan.cache.v[layer], v)


@pytest.mark.parametrize("cache", ["efficient", "reference", "none"])
def test_execute_is_replayable(cache):
    model, sampler = tiny_model("bd3lm"), bd3(block_size=4, steps_per_block=3, cache=cache)
    plan = sampler.plan(model, batch_size=2, seq_len=16, generator=gen(0))
    a = sampler.execute(model, plan, generator=gen(5))
    b = sampler.execute(model, plan, generator=gen(5))
    assert torch.equal(a.tokens, b.tokens) and a.calls == b.calls


# ---------------------------------------------------------------------------------------------
# Calls, NFE and work counters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bos", [BOS, None])
@pytest.mark.parametrize("blk", [1, 4, 16])
@pytest.mark.parametrize("b", [1, 3])
def test_first_hitting_nfe_is_exact(bos, blk, b):
    """One position per call: L − 1 denoising calls with BOS (L without), plus L/L′ stores."""
    L = 64
    model = fixed_model("bd3lm", torch.randn(L, 9), bos_index=bos)
    out = run(bd3(block_size=blk, mode="first_hitting"), model, b, L, 0)
    n_den = L - (bos is not None)
    assert out.nfe_denoise == n_den and out.nfe_total == n_den + L // blk
    assert out.step_sizes == [1.0] * n_den
    assert out.info["nfe_expected"] == out.nfe_total
    assert out.token_forwards == out.nfe_total * blk
    assert out.calls == bd3(block_size=blk, mode="first_hitting").expected_calls(
        model.config, batch_size=b, seq_len=L
    )
    for call in model.calls:  # every denoising call sees exactly one fewer mask than before
        assert call.fed.shape == (b, blk)
    masks = [int((c.fed == 8).sum(-1)[0]) for c in model.calls if c.head_rows]
    assert all(m >= 1 for m in masks)


def test_one_step_per_block_gives_twice_the_blocks():
    """T′ = 1: one denoising call and one store per block (paper Table 15: 512 at L′ = 4)."""
    L = 1024
    model = fixed_model("bd3lm", torch.randn(9), bos_index=BOS)
    out = run(bd3(block_size=4, steps_per_block=1), model, 1, L, 0)
    assert out.nfe_denoise == 256 and out.nfe_total == 512


@pytest.mark.parametrize(
    "blk,steps,paper_pred", [(4, 4, 956), (4, 16, 1187), (8, 32, 1046), (16, 64, 976)]
)
def test_expectation_reproduces_the_published_per_block_prediction(blk, steps, paper_pred):
    """Σ_blocks [T′(1 − (1 − 1/T′)^masked) + 1] at L = 1024, b = 1 (published-numbers.md §3.3)."""
    cfg = BD3LMConfig(block_size=blk, steps_per_block=steps)
    masked = masked_per_block(1024, blk, BOS)
    got = expected_denoise_calls(LOGLINEAR, cfg, 1, masked) + 1024 // blk
    assert abs(got - paper_pred) < 0.5, got


@pytest.mark.parametrize(
    "b,blk,steps,cache",
    [
        (1, 4, 4, "efficient"),
        (3, 4, 4, "none"),
        (1, 4, 16, "none"),
        (3, 4, 16, "efficient"),
        (1, 8, 3, "efficient"),
        (3, 8, 3, "efficient"),
    ],
)
def test_measured_nfe_matches_expectation(b, blk, steps, cache):
    """Mean nfe_total over 60 runs within 5 standard errors of nfe_expected (p_fail < 1e-6).

    +0.01 absorbs configurations whose NFE is almost deterministic (sample sd 0).
    """
    L = 64
    model = fixed_model("bd3lm", torch.randn(9), bos_index=BOS)
    sampler = bd3(block_size=blk, steps_per_block=steps, cache=cache)
    outs = [run(sampler, model, b, L, s) for s in range(60)]
    nfe = torch.tensor([o.nfe_total for o in outs], dtype=torch.float64)
    want = outs[0].info["nfe_expected"]
    assert abs(nfe.mean().item() - want) <= 5 * nfe.std().item() / math.sqrt(len(nfe)) + 0.01, (
        nfe.mean(),
        want,
    )
    stores = L // blk if cache != "none" else 0
    masked = masked_per_block(L, blk, BOS)
    q = 1 - (1 - 1 / steps) ** (b * torch.tensor(masked, dtype=torch.float64))
    assert want == pytest.approx(float(steps * q.sum()) + stores)
    # Each executed step commits ≥ 1 token somewhere in the batch: the no-change cache.
    for o in outs[:5]:
        assert all(s > 0 for s in o.step_sizes) and sum(o.step_sizes) == pytest.approx(L - 1)


def test_grid_commits_uniformly_over_steps():
    """Uniform grid (s = t − 1/T′): a token's commit step is uniform over the T′ steps.

    χ² over the aggregated per-step counts of 300 rows × 16 blocks; fails when p < 1e-6.
    """
    T = 8
    c = block_counts(LOGLINEAR, 4, T, 300 * 16, gen(2))  # (rows, T′)
    assert (c.sum(-1) == 4).all()
    total = c.sum(0).double()
    assert chisquare(total, torch.full((T,), total.sum() / T)).pvalue > 1e-6
    model = fixed_model("bd3lm", torch.randn(9))
    plan = bd3(block_size=4, steps_per_block=T).plan(
        model, batch_size=3, seq_len=64, generator=gen(3)
    )
    for steps in plan.steps:  # the plan keeps only steps where some row commits
        assert all(bool(k.any()) for k in steps)
        assert int(sum(k for k in steps).sum()) == 3 * 4


@pytest.mark.parametrize("mode", ["ancestral", "first_hitting"])
@pytest.mark.parametrize("cache", ["efficient", "reference", "none"])
def test_call_records_and_token_forwards(mode, cache):
    L, blk, b = 16, 4, 2
    model = fixed_model("bd3lm", torch.randn(9), bos_index=BOS)
    out = run(bd3(block_size=blk, steps_per_block=3, mode=mode, cache=cache), model, b, L, 1)
    assert len(out.calls) == out.nfe_total == len(model.calls)
    for rec, call in zip(out.calls, model.calls):
        fed, queries, keys, head = rec
        P = call.positions[0, -1].item() + 1 - blk  # block start
        assert fed == call.fed.shape[1] and keys == P + blk
        assert queries == (P + blk if cache != "efficient" else blk)
        assert head == call.head_rows
    assert out.token_forwards == sum(c[0] for c in out.calls)
    exp = bd3(block_size=blk, steps_per_block=3, mode=mode, cache=cache).expected_calls(
        model.config, batch_size=b, seq_len=L
    )
    assert abs(len(exp) - out.info["nfe_expected"]) <= 1


# ---------------------------------------------------------------------------------------------
# Distribution (fixed-logits model)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ancestral", "first_hitting"])
@pytest.mark.parametrize("cache", ["efficient", "reference", "none"])
def test_tokens_land_at_their_natural_positions(mode, cache):
    L, V = 24, 11
    model = fixed_model("bd3lm", peaked_table(L, V), bos_index=7)
    out = run(bd3(block_size=4, steps_per_block=3, mode=mode, cache=cache), model, 3, L, 4)
    want = (torch.arange(L) % (V - 1)).expand(3, L).clone()
    want[:, 0] = 7
    assert torch.equal(out.tokens, want)


@pytest.mark.parametrize("mode", ["ancestral", "first_hitting"])
@pytest.mark.parametrize("top_p,convention", [(1.0, "hf"), (0.8, "strict"), (0.8, "hf")])
def test_tokens_follow_the_model_distribution(mode, top_p, convention):
    """Fixed logits ℓ: every generated token ~ softmax(ℓ) (restricted to the nucleus).

    Pearson χ² over 30 × 32 tokens; the test fails when p < 1e-6, so p_fail = 1e-6.
    """
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0, 9.0])
    model = fixed_model("bd3lm", logits)
    sampler = bd3(
        block_size=8, steps_per_block=4, mode=mode, top_p=top_p, top_p_convention=convention
    )
    out = run(sampler, model, 30, 32, 9)
    p = torch.softmax(logits[:5].double(), -1)
    if top_p < 1:  # p = .21 .09 .05 .57 .08: sorted ids 3 0 1 4 2, cumsum .57 .78 .88 …
        keep = torch.zeros(5, dtype=torch.bool)
        keep[[3, 0] if convention == "strict" else [3, 0, 1]] = True  # hf keeps the crossing id
        p = torch.where(keep, p, 0.0)
        p = p / p.sum()
    counts = torch.bincount(out.tokens.flatten(), minlength=6).double()
    assert counts[5] == 0 and counts[:5][p == 0].sum() == 0
    support = p > 0
    assert chisquare(counts[:5][support], p[support] * counts.sum()).pvalue > 1e-6


# ---------------------------------------------------------------------------------------------
# Policies plug in by name; adaptive ones take the no-change-cache path
# ---------------------------------------------------------------------------------------------


class HesitantPolicy:
    """Adaptive test policy: every other select commits nothing, otherwise the k most confident."""

    name = "test_hesitant"
    adaptive = True

    def __init__(self) -> None:
        self.calls = 0
        self.commits = 0

    def select(self, confidence, masked, k, generator):
        self.calls += 1
        if self.calls % 2:
            return torch.zeros_like(masked)
        out = _top_k_mask(confidence, masked, k)
        self.commits += int(bool(out.any()))
        return out


class StubbornPolicy:
    name = "test_stubborn"
    adaptive = True

    def select(self, confidence, masked, k, generator):
        return torch.zeros_like(masked)


@pytest.fixture
def test_policies():
    POLICIES.add("test_hesitant", HesitantPolicy)
    POLICIES.add("test_stubborn", StubbornPolicy)
    yield
    POLICIES.remove("test_hesitant")
    POLICIES.remove("test_stubborn")


@pytest.mark.usefixtures("test_policies")
@pytest.mark.parametrize("mode", ["ancestral", "first_hitting"])
def test_adaptive_policy_reuses_logits_and_finishes_blocks(mode):
    """Calls happen only after a change (no-change cache); extra steps finish every block."""
    model = tiny_model("bd3lm", bos_index=BOS)
    outs = {}
    for cache in ("efficient", "reference", "none"):
        sampler = bd3(
            block_size=4, steps_per_block=3, mode=mode, cache=cache, policy="test_hesitant"
        )
        outs[cache] = run(sampler, Recorder(model), 2, 16, 0)
        assert (outs[cache].tokens != 32).all()
        # One call per committing step: each commit invalidates the logits exactly once.
        assert outs[cache].nfe_denoise == sampler.policy.commits
        assert sampler.policy.calls > sampler.policy.commits
    for cache in ("efficient", "reference"):
        assert torch.equal(outs[cache].tokens, outs["none"].tokens)
        assert outs[cache].nfe_denoise == outs["none"].nfe_denoise
    assert math.isnan(outs["none"].info["nfe_expected"]) == (mode == "ancestral")


@pytest.mark.usefixtures("test_policies")
def test_policy_that_never_commits_is_a_clear_error():
    with pytest.raises(SamplerError, match="policy 'test_stubborn' left masks in block 0"):
        run(bd3(block_size=4, policy="test_stubborn"), tiny_model("bd3lm"), 1, 8, 0)


@pytest.mark.usefixtures("test_policies")
def test_profile_with_adaptive_policy_is_rejected():
    with pytest.raises(ConfigError, match="adaptive policy 'test_hesitant'"):
        bd3(policy="test_hesitant", profile=True)


# ---------------------------------------------------------------------------------------------
# Profile mode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ancestral", "first_hitting"])
@pytest.mark.parametrize("cache", ["efficient", "reference", "none"])
def test_profile_mode_issues_the_same_calls(mode, cache):
    model = tiny_model("bd3lm", bos_index=BOS)
    kw = {"block_size": 4, "steps_per_block": 3, "mode": mode, "cache": cache}
    full_s, prof_s = bd3(**kw), bd3(**kw, profile=True)
    plan = full_s.plan(model, batch_size=2, seq_len=16, generator=gen(0))
    rf, rp = Recorder(model), Recorder(model)
    full = full_s.execute(rf, plan, generator=gen(1))
    prof = prof_s.execute(rp, plan, generator=gen(1))
    assert rf.log == rp.log and full.calls == prof.calls
    assert (full.nfe_denoise, full.nfe_total) == (prof.nfe_denoise, prof.nfe_total)
    assert (prof.tokens[:, 1:] == model.config.mask_id).all()


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_config_problems_are_reported_together():
    with pytest.raises(ConfigError) as err:
        bd3(block_size=0, steps_per_block=0, top_p=1.5, schedule="cosin", policy="randm")
    msg = str(err.value)
    for part in (
        "'block_size' is 0",
        "'steps_per_block' is 0",
        "'top_p' is 1.5",
        "Unknown schedule 'cosin'",
        "Did you mean: random?",
    ):
        assert part in msg, part


def test_config_round_trip_and_yaml_errors():
    cfg = BD3LMConfig(block_size=16, mode="first_hitting", cache="reference")
    assert from_dict(BD3LMConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError) as err:
        from_dict(BD3LMConfig, {"mode": "first-hitting", "cache": "effcient"})
    assert "Did you mean: first_hitting?" in str(err.value)
    assert "Did you mean: efficient?" in str(err.value)


def test_size_and_model_mismatches_are_clear_errors():
    with pytest.raises(SamplerError, match="'block_size' 3 does not divide seq_len 16"):
        run(bd3(block_size=3), tiny_model("bd3lm"), 1, 16, 0)
    with pytest.raises(
        SamplerError,
        match="'block_size' is 4 but the model was trained with block size 8. Set block_size: 8",
    ):
        run(bd3(block_size=4), tiny_model("bd3lm", block_size=8), 1, 16, 0)
    with pytest.raises(SamplerError, match="needs a model of family bd3lm.*'esolm'"):
        run(bd3(), tiny_model("esolm"), 1, 16, 0)


# ---------------------------------------------------------------------------------------------
# A schedule that leaves masks at t = 0: the final grid step still fills the block
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def short_schedule():
    from tests.samplers.test_esolm import ShortSchedule

    SCHEDULES.add("test_short", ShortSchedule)
    yield
    SCHEDULES.remove("test_short")


@pytest.mark.usefixtures("short_schedule")
def test_final_step_fills_every_mask_for_any_schedule():
    """≈ 40 % of each block is left by the walk; the last step takes it. Mean nfe_total over
    60 runs within 5 standard errors of the expectation (p_fail < 1e-6)."""
    L, blk, T = 32, 8, 4
    model = fixed_model("bd3lm", torch.randn(9), bos_index=BOS)
    sampler = bd3(block_size=blk, steps_per_block=T, schedule="test_short")
    outs = [run(sampler, model, 1, L, s) for s in range(60)]
    for o in outs:
        assert (o.tokens != 8).all() and o.nfe_denoise <= T * (L // blk)
    nfe = torch.tensor([o.nfe_total for o in outs], dtype=torch.float64)
    want = outs[0].info["nfe_expected"]
    assert abs(nfe.mean().item() - want) <= 5 * nfe.std().item() / math.sqrt(len(nfe)) + 0.01
    q = reveal_probabilities(SCHEDULES.build("test_short"), T)  # the last step absorbs 1 − Σq
    assert q.sum().item() == pytest.approx(1.0) and q[-1].item() == pytest.approx(0.15 + 0.4)


@pytest.mark.usefixtures("short_schedule")
@pytest.mark.parametrize("alpha0", [1.0, 0.5])
def test_vectorised_walk_has_the_law_of_the_row_walk(alpha0):
    """binomial_counts_rows vs binomial_counts, 2000 rows each: per-step means agree within
    5 two-sample standard errors (Bonferroni over 6 steps: p_fail < 1e-5)."""
    from samplers.schedules import binomial_counts, binomial_counts_rows

    sched, n, T, rows = SCHEDULES.build("test_short"), 7, 6, 2000
    fast = binomial_counts_rows(sched, n, T, rows, gen(0), alpha0).double()
    g = gen(1)
    slow = torch.tensor(
        [binomial_counts(sched, n, T, g, alpha0) for _ in range(rows)], dtype=torch.float64
    )
    assert fast.shape == slow.shape == (rows, T)
    se = torch.sqrt(fast.var(0) / rows + slow.var(0) / rows)
    assert ((fast.mean(0) - slow.mean(0)).abs() <= 5 * se + 1e-12).all(), (
        fast.mean(0),
        slow.mean(0),
    )
    assert (fast.sum(-1) <= n).all()
