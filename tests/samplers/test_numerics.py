"""The shared sampling numerics of samplers/base.py on hand-made distributions."""

from __future__ import annotations

import torch
from scipy import stats

from samplers.base import gumbel_argmax, gumbel_noise, subs_log_probs, top_p_filter

P_FAIL = 1e-5


def test_gumbel_noise_is_finite_float64():
    g = gumbel_noise((1000, 7), torch.Generator().manual_seed(0), "cpu")
    assert g.dtype == torch.float64 and bool(torch.isfinite(g).all())
    # Gumbel(0, 1) has mean γ ≈ 0.5772 and variance π²/6; 7000 draws: sd of the mean 0.0153.
    assert abs(float(g.mean()) - 0.5772) < 5 * 0.0153


def test_gumbel_max_frequencies_match_softmax():
    """200 000 draws from a 5-way law; chi-square (4 dof) at 1e-5: false-failure prob. 1e-5."""
    p = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05], dtype=torch.float64)
    n = 200_000
    x = gumbel_argmax(p.log().expand(n, 5), torch.Generator().manual_seed(1))
    observed = torch.bincount(x, minlength=5).double()
    chi2 = float(((observed - n * p) ** 2 / (n * p)).sum())
    assert chi2 < stats.chi2.isf(P_FAIL, 4), observed / n


def test_gumbel_max_never_picks_minus_infinity():
    lp = torch.log(torch.tensor([0.0, 0.5, 0.0, 0.5], dtype=torch.float64)).expand(5000, 4)
    x = gumbel_argmax(lp, torch.Generator().manual_seed(2))
    assert set(x.unique().tolist()) == {1, 3}


def test_subs_removes_the_mask_and_leaves_the_input_alone():
    logits = torch.tensor([[1.0, 2.0, 50.0]], dtype=torch.float64)
    before = logits.clone()
    lp = subs_log_probs(logits, mask_id=2)
    assert torch.equal(logits, before)
    assert lp[0, 2] == float("-inf")
    torch.testing.assert_close(lp.exp()[0, :2].sum(), torch.tensor(1.0, dtype=torch.float64))


def kept(p, top_p, convention):
    out = top_p_filter(torch.tensor(p, dtype=torch.float64).log(), top_p, convention)
    return torch.isfinite(out).nonzero().flatten().tolist(), out.exp()


def test_top_p_hf_keeps_the_crossing_token_strict_does_not():
    p = [0.15, 0.5, 0.05, 0.3]  # sorted: 0.5, 0.3 (crosses 0.7), 0.15, 0.05
    ids, probs = kept(p, 0.7, "hf")
    assert sorted(ids) == [1, 3]
    torch.testing.assert_close(probs[[1, 3]], torch.tensor([0.625, 0.375], dtype=torch.float64))
    ids, probs = kept(p, 0.7, "strict")
    assert ids == [1] and float(probs[1]) == 1.0


def test_top_p_strict_keeps_the_top1_even_below_p():
    ids, _ = kept([0.6, 0.4], 0.3, "strict")
    assert ids == [0]
    ids, _ = kept([0.6, 0.4], 0.3, "hf")
    assert ids == [0]


def test_top_p_one_is_the_identity():
    lp = torch.tensor([0.2, 0.8], dtype=torch.float64).log()
    assert torch.equal(top_p_filter(lp, 1.0, "hf"), lp)
