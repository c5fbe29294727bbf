"""The four training objectives against independent oracles (training.md §7.3 items 1-13).

Models: ``tests.conftest.tiny_model`` (seeded non-zero weights, V = 33, mask 32) for structure
and leakage tests; a freshly constructed DiT (reference init: zero head, so every logit is 0) for
the initial-loss values of §7.1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from harness.model.network import DiT, DiTConfig
from harness.train.objectives import (
    SCHEDULE_EPS,
    ObjectiveConfig,
    alpha,
    ar_loss,
    bd3lm_block_t,
    bd3lm_forward,
    bd3lm_loss,
    block_diff_mask,
    esolm_forward,
    esolm_loss,
    esolm_order,
    mask_tokens,
    mdlm_loss,
    nelbo_weight,
    resample_blocks,
    sample_t,
    stratified_uniform,
    subs_nll,
)
from tests.conftest import TINY, tiny_model

V, M = TINY["vocab_size"], TINY["vocab_size"] - 1


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_rows(b: int, L: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, M, (b, L), generator=gen(seed))


def fresh(family: str, **kw) -> DiT:
    torch.manual_seed(0)
    return DiT(DiTConfig(family=family, **{**TINY, **kw}))


# ---------------------------------------------------------------------------------------------
# 1-4: schedule, t draws, masking, SUBS
# ---------------------------------------------------------------------------------------------


def test_schedule_endpoints_monotone_and_weight_is_one_over_t():
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    a = alpha(t)
    assert a[0] == 1 and abs(float(a[-1]) - SCHEDULE_EPS) < 1e-15
    assert (a[1:] < a[:-1]).all()
    # -α'/(1-α) by central finite differences equals 1/t (and nelbo_weight).
    tt = torch.tensor([1e-3, 0.01, 0.3, 0.77, 0.999], dtype=torch.float64)
    h = 1e-7
    deriv = (alpha(tt + h) - alpha(tt - h)) / (2 * h)
    assert_close(-deriv / (1 - alpha(tt)), 1 / tt, rtol=1e-6, atol=0)
    assert_close(nelbo_weight(tt), 1 / tt, rtol=1e-12, atol=0)


def test_antithetic_t_one_draw_per_stratum_within_range():
    b, eps = 64, 1e-3
    t = sample_t(b, gen(1), eps, antithetic=True)
    assert t.min() >= eps and t.max() <= 1
    u = (t - eps) / (1 - eps)
    strata = torch.floor(u * b).long()
    assert torch.equal(strata, torch.arange(b))
    tb = bd3lm_block_t(8, 4, gen(2), 0.45, 0.95, antithetic=True)
    assert tb.shape == (8, 4) and tb.min() >= 0.45 and tb.max() <= 0.95
    ub = ((tb - 0.45) / 0.5).flatten()
    assert torch.equal(
        torch.floor(ub * 32).long(), torch.arange(32)
    )  # u_{j,k} in stratum j·n_b + k
    assert torch.equal(stratified_uniform((3,), gen(0), False), torch.rand(3, generator=gen(0)))


def test_mask_rate_matches_one_minus_alpha_and_clean_tokens_unchanged():
    """Binomial: n = 200 000 draws per rate; |rate − p| < 5σ fails with p < 1e-6."""
    x = rand_rows(400, 500, seed=3)
    for p in (0.1, 0.5, 0.93):
        z, masked = mask_tokens(x, torch.tensor(p), gen(4), M)
        sigma = math.sqrt(p * (1 - p) / x.numel())
        assert abs(masked.float().mean().item() - p) < 5 * sigma
        assert torch.equal(z[~masked], x[~masked])
        assert (z[masked] == M).all()
        assert not (x == M).any()


def test_subs_never_predicts_mask_and_matches_log_softmax():
    logits = torch.randn(2, 5, V, generator=gen(5))
    tgt = rand_rows(2, 5, seed=6)
    for m in (M, 0):
        tgt_m = tgt if m == M else tgt % 7 + 1
        ref = -(logits.masked_fill(torch.arange(V) == m, float("-inf")).log_softmax(-1))
        got = subs_nll(logits.clone(), tgt_m, m)
        assert_close(got, ref.gather(-1, tgt_m[..., None])[..., 0])
        assert torch.isfinite(got).all()


def _capture_logits(model: DiT):
    box = {}

    def hook(_m, _inp, out):
        out.retain_grad()
        box["logits"] = out

    return box, model.output_layer.register_forward_hook(hook)


@pytest.mark.parametrize("family", ["mdlm", "esolm"])
def test_loss_and_gradient_are_zero_at_clean_positions_and_mask_column(family):
    model = tiny_model(family).train()
    box, handle = _capture_logits(model)
    x = rand_rows(4, 16, seed=7)
    fn = {"mdlm": mdlm_loss, "esolm": esolm_loss}[family]
    g = gen(8)
    fn(model, x, g, ObjectiveConfig(family=family), True).loss.backward()
    handle.remove()
    grad = box["logits"].grad  # (b, L, V), in the fed order
    # Recompute which fed positions were masked: replay the same generator draws.
    g = gen(8)
    t = sample_t(4, g, 1e-3, True)
    z, masked = mask_tokens(x, (1 - alpha(t))[:, None], g, M)
    if family == "esolm":
        masked = masked.gather(1, esolm_order(masked, g))
    assert masked.any() and (~masked).any()
    assert (grad[~masked] == 0).all()
    assert (grad[..., M] == 0).all()
    assert (grad[masked].abs().sum(-1) > 0).all()


# ---------------------------------------------------------------------------------------------
# 5: loss at initialisation (zero head: every logit is 0, p = 1/(V − 1))
# ---------------------------------------------------------------------------------------------


def test_ar_initial_loss_is_log_v_minus_one_exactly():
    model = fresh("ar")
    x = rand_rows(3, 16)
    for train in (True, False):
        terms = ar_loss(model, x, gen(), ObjectiveConfig(family="ar"), train)
        assert terms.count == 3 * 15
        assert_close(terms.loss, torch.tensor(math.log(V - 1)), rtol=1e-6, atol=0)


def test_mdlm_initial_loss_is_one_minus_eps_log_v():
    """b = 512 antithetic rows, L = 64: ratio s.d. 0.013 (300 seeds, weight 1/t); 0.08 ≈ 6σ."""
    model = fresh("mdlm")
    x = rand_rows(512, 64, seed=9)
    with torch.no_grad():
        ratio = mdlm_loss(model, x, gen(10), ObjectiveConfig(), True).loss / math.log(V - 1)
        val = mdlm_loss(model, x, gen(10), ObjectiveConfig(), False).loss / math.log(V - 1)
    assert abs(float(ratio) - (1 - 1e-3)) < 0.08
    assert abs(float(val) - (1 - 1e-3)) < 0.08


def test_esolm_initial_low_var_loss_is_half_log_v_and_nelbo_is_log_v():
    """low_var: E[(1 − ε)t] = (1 − ε)(1 + ε_s)/2 ≈ 0.5; s.d. 0.0023 (300 seeds); tolerance 0.03."""
    model = fresh("esolm")
    x = rand_rows(512, 64, seed=11)
    ocfg = ObjectiveConfig(family="esolm", loss_type="low_var")
    with torch.no_grad():
        lv = esolm_loss(model, x, gen(12), ocfg, True).loss / math.log(V - 1)
        nelbo = esolm_loss(model, x, gen(12), ocfg, False).loss / math.log(V - 1)
    assert abs(float(lv) - (1 - 1e-3) * (1 + 1e-3) / 2) < 0.03
    assert abs(float(nelbo) - (1 - 1e-3)) < 0.08


def bd3_c(block: int, lo: float, hi: float) -> float:
    """c = E_t[E(f | f ∈ [β, ω]) / t], t ~ U[β, ω], L′f ~ Binomial(L′, t) (training.md §7.1)."""
    from math import comb

    ts = np.linspace(lo, hi, 20001)
    ks = [k for k in range(block + 1) if lo <= k / block <= hi]
    vals = []
    for t in ts:
        p = np.array([comb(block, k) * t**k * (1 - t) ** (block - k) for k in ks])
        vals.append((p * np.array(ks) / block).sum() / p.sum() / t)
    return float(np.trapezoid(vals, ts) / (hi - lo))


@pytest.mark.parametrize(
    ("block", "lo", "hi", "c_doc"), [(4, 0.45, 0.95, 0.97), (16, 0.3, 0.8, 1.01)]
)
def test_bd3lm_initial_loss_matches_clipped_resampled_expectation(block, lo, hi, c_doc):
    """Expected c·log(V − 1)·(L − 1)/L; 1 024 rows: relative s.d. < 0.5 %, tolerance 3 %."""
    c = bd3_c(block, lo, hi)
    assert abs(c - c_doc) < 0.01  # the value tabulated in training.md §7.1
    model = fresh("bd3lm", block_size=block)
    L = 32
    x = rand_rows(1024, L, seed=13)
    ocfg = ObjectiveConfig(
        family="bd3lm", block_size=block, clip_min=lo, clip_max=hi, resample=True
    )
    with torch.no_grad():
        loss = bd3lm_loss(model, x, gen(14), ocfg, True).loss
    expect = c * math.log(V - 1) * (L - 1) / L
    assert abs(float(loss) / expect - 1) < 0.03


# ---------------------------------------------------------------------------------------------
# 6: normalisation (an independent re-computation with the same random draws)
# ---------------------------------------------------------------------------------------------


def test_mdlm_loss_equals_oracle_with_divisor_b_times_l():
    model = tiny_model("mdlm")
    b, L = 4, 16
    x = rand_rows(b, L, seed=15)
    terms = mdlm_loss(model, x, gen(16), ObjectiveConfig(), True)
    g = gen(16)
    u = (torch.rand(b, generator=g) + torch.arange(b)) / b
    t = 1e-3 + (1 - 1e-3) * u
    masked = torch.rand(b, L, generator=g) < (1 - 1e-3) * t[:, None]
    z = torch.where(masked, M, x)
    logp = model(z).masked_fill(torch.arange(V) == M, float("-inf")).log_softmax(-1)
    ce = -logp.gather(-1, x[..., None])[..., 0]
    expect = (ce * masked / t[:, None]).sum() / (b * L)
    assert terms.count == b * L
    assert_close(terms.loss, expect, rtol=1e-5, atol=1e-6)
    assert masked.sum() < b * L  # the divisor is not the masked count


# ---------------------------------------------------------------------------------------------
# 7-9: BD3-LM
# ---------------------------------------------------------------------------------------------

# L = 8, L' = 2. Rows/cols 0-7 noisy blocks (0,0,1,1,2,2,3,3), 8-15 clean blocks (same).
BD3_MASK_8_2 = """
1100000000000000
1100000000000000
0011000011000000
0011000011000000
0000110011110000
0000110011110000
0000001111111100
0000001111111100
0000000011000000
0000000011000000
0000000011110000
0000000011110000
0000000011111100
0000000011111100
0000000011111111
0000000011111111
"""


def test_block_diff_mask_matches_hand_written_matrix():
    want = torch.tensor([[c == "1" for c in row] for row in BD3_MASK_8_2.split()])
    assert torch.equal(block_diff_mask(8, 2), want)
    with pytest.raises(ValueError, match="divide"):
        block_diff_mask(8, 3)


def test_bd3lm_no_leakage_from_later_clean_blocks_or_other_noisy_blocks():
    model = tiny_model("bd3lm", block_size=4)
    L, Lb = 16, 4
    x = rand_rows(2, L, seed=17)
    z, _ = mask_tokens(x, torch.tensor(0.5), gen(18), M)
    base = bd3lm_forward(model, z, x, Lb)
    for j in range(L // Lb):
        blk = slice(j * Lb, (j + 1) * Lb)
        x2, z2 = x.clone(), z.clone()
        x2[:, j * Lb :] = (x2[:, j * Lb :] + 1) % M  # clean blocks >= j change
        other = torch.ones(L, dtype=torch.bool)
        other[blk] = False
        z2[:, other] = (x[:, other] + 3) % M  # every other noisy block changes
        out = bd3lm_forward(model, z2, x2, Lb)
        assert_close(out[:, blk], base[:, blk])
        if j > 0:  # and the earlier clean blocks do matter
            x3 = x.clone()
            x3[:, 0] = (x3[:, 0] + 1) % M
            assert not torch.allclose(bd3lm_forward(model, z, x3, Lb)[:, blk], base[:, blk])


def test_bd3lm_with_block_equal_to_length_is_the_mdlm_forward():
    model = tiny_model("bd3lm", block_size=16)
    x = rand_rows(3, 16, seed=19)
    z, _ = mask_tokens(x, torch.tensor(0.6), gen(20), M)
    assert_close(bd3lm_forward(model, z, x, 16), model(z, is_causal=False))


def test_resampling_puts_every_block_fraction_in_range_and_weight_uses_drawn_t():
    b, L, Lb, lo, hi = 64, 32, 4, 0.45, 0.95
    x = rand_rows(b, L, seed=21)
    t = bd3lm_block_t(b, L // Lb, gen(22), lo, hi, True).repeat_interleave(Lb, 1)
    z, masked = mask_tokens(x, t, gen(23), M)
    frac0 = masked.view(b, -1, Lb).float().mean(-1)
    assert ((frac0 < lo) | (frac0 > hi)).any()  # the test is not vacuous
    z, masked = resample_blocks(x, z, masked, t, Lb, lo, hi, gen(24), M)
    frac = masked.view(b, -1, Lb).float().mean(-1)
    assert ((frac >= lo) & (frac <= hi)).all()
    assert torch.equal(z == M, masked) and torch.equal(z[~masked], x[~masked])
    # The loss weight is 1/t of the drawn t: a zero-head model gives Σ masked·log(V−1)/t.
    model = fresh("bd3lm", block_size=Lb)
    ocfg = ObjectiveConfig(family="bd3lm", block_size=Lb, clip_min=lo, clip_max=hi, resample=True)
    with torch.no_grad():
        terms = bd3lm_loss(model, x, gen(25), ocfg, True)
    g = gen(25)
    t = bd3lm_block_t(b, L // Lb, g, lo, hi, True).repeat_interleave(Lb, 1)
    z, masked = mask_tokens(x, t, g, M)
    z, masked = resample_blocks(x, z, masked, t, Lb, lo, hi, g, M)
    masked[:, 0] = False
    expect = (masked / t).sum() * math.log(V - 1)
    assert_close(terms.total, expect.float(), rtol=1e-5, atol=0)


def test_bd3lm_position_zero_clean_and_validation_count():
    model = tiny_model("bd3lm", block_size=4)
    x = rand_rows(4, 16, seed=26)
    ocfg = ObjectiveConfig(
        family="bd3lm", block_size=4, clip_min=0.45, clip_max=0.95, resample=True
    )
    assert bd3lm_loss(model, x, gen(), ocfg, True).count == 4 * 16
    assert bd3lm_loss(model, x, gen(), ocfg, False).count == 4 * 15


# ---------------------------------------------------------------------------------------------
# 10-12: Eso-LM (B)
# ---------------------------------------------------------------------------------------------


def test_esolm_order_is_permutation_clean_first_both_groups_shuffled():
    b, L = 256, 16
    x = rand_rows(b, L, seed=27)
    _, masked = mask_tokens(x, torch.tensor(0.5), gen(28), M)
    order = esolm_order(masked, gen(29))
    assert torch.equal(order.sort(1).values, torch.arange(L).expand(b, L))
    m_sorted = masked.gather(1, order)
    n_c = (~masked).sum(1)
    assert torch.equal(m_sorted, torch.arange(L)[None] >= n_c[:, None])  # clean, then masks

    # Shuffled inside each group: not always in increasing natural order.
    def increasing_share(group: torch.Tensor) -> float:
        hits = 0
        for r in range(b):
            pos = order[r][group[r]]
            hits += bool((pos[1:] > pos[:-1]).all()) if len(pos) > 2 else 0
        return hits / b

    assert increasing_share(~m_sorted) < 0.2 and increasing_share(m_sorted) < 0.2


def test_esolm_sorted_forward_equals_unsorted_forward_with_rank_mask_and_no_leak():
    model = tiny_model("esolm")
    b, L = 3, 16
    x = rand_rows(b, L, seed=30)
    z, masked = mask_tokens(x, torch.tensor(0.5), gen(31), M)
    order = esolm_order(masked, gen(32))
    z_s = z.gather(1, order)
    sorted_logits = esolm_forward(model, z_s, order)  # (b, L, V), sorted order
    rank = order.argsort(1)  # natural position → sorted index
    allowed = rank[:, None, :] <= rank[:, :, None]  # (b, q, k): rank(k) <= rank(q)
    natural = model(z, attn_mask=allowed[:, None])  # natural order, natural positions
    unsorted = torch.empty_like(sorted_logits).scatter_(
        1, order[..., None].expand_as(sorted_logits), sorted_logits
    )
    assert_close(unsorted, natural, rtol=1e-5, atol=1e-5)
    # No leak: changing sorted indices > j leaves the logits at <= j unchanged.
    j = 7
    z2 = z_s.clone()
    z2[:, j + 1 :] = (z2[:, j + 1 :] + 5) % M
    assert_close(esolm_forward(model, z2, order)[:, : j + 1], sorted_logits[:, : j + 1])


def test_esolm_training_logits_equal_cached_sampler_step():
    """§7.3 item 12: masks at sorted n_c … n_c+k−1 get the same logits as the KV-cached step."""
    model = tiny_model("esolm")
    b, L, k = 2, 16, 3
    x = rand_rows(b, L, seed=33)
    masked = torch.zeros(b, L, dtype=torch.bool)
    masked[:, torch.tensor([1, 4, 5, 9, 12, 13, 15])] = True  # same n_c in every row
    z = torch.where(masked, M, x)
    order = esolm_order(masked, gen(34))
    n_c = int((~masked[0]).sum())
    train_logits = esolm_forward(model, z.gather(1, order), order)
    with torch.no_grad():
        cache = model.new_kv_cache(b, L)
        cos, sin = model.rotary_emb.tables(order)  # (b, L, 1, d_h): π-gathered tables
        model.forward_cached(
            x.gather(1, order[:, :n_c]),
            cache,
            start=0,
            causal=True,
            rope=(cos[:, :n_c], sin[:, :n_c]),
            return_logits=False,
        )
        step = model.forward_cached(
            torch.full((b, k), M),
            cache,
            start=n_c,
            causal=True,
            rope=(cos[:, n_c : n_c + k], sin[:, n_c : n_c + k]),
        )
    assert_close(step, train_logits[:, n_c : n_c + k], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 13: AR
# ---------------------------------------------------------------------------------------------


def test_ar_targets_shifted_and_causal_no_leak():
    model = tiny_model("ar")
    x = rand_rows(2, 16, seed=35)
    terms = ar_loss(model, x, gen(), ObjectiveConfig(family="ar"), True)
    logits = model(x[:, :-1])
    expect = F.cross_entropy(logits[..., :M].flatten(0, 1), x[:, 1:].flatten())
    assert_close(terms.loss, expect)
    x2 = x.clone()
    x2[:, 9:] = (x2[:, 9:] + 1) % M
    assert_close(model(x2[:, :-1])[:, :9], logits[:, :9])
