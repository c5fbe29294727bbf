"""Sampled tokens follow the law the denoiser's logits imply (FixedLogitsModel oracle).

With logits that depend on the position only, every token of a diffusion sampler at position p is
one draw from softmax(table[p] / temperature) without the mask, whatever the decoding order
(random and left-to-right orders do not look at the proposals); an AR token at p is a draw from
row p − 1. Each test pools the per-position chi-square statistics of N independent rows
(positions within a row are independent here) and compares with the chi-square quantile at 1e-5:
the false-failure probability of each test is 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from samplers.ar import AR, ARConfig
from samplers.mdlm_ancestral import MDLMAncestral, MDLMConfig
from samplers.mdlm_first_hitting import FirstHittingConfig, MDLMFirstHitting
from tests.samplers.fakes import FixedLogitsModel, position_table, token_law

P_FAIL = 1e-5
V, L, N = 6, 8, 3000  # 5 real ids + mask (5); 8 positions; 3000 rows
BOS = 4

# name → (sampler factory taking numerics kwargs, model family, law row offset)
SAMPLERS_UNDER_TEST = {
    "mdlm_random": (lambda **kw: MDLMAncestral(MDLMConfig(num_steps=4, **kw)), "mdlm", 0),
    "mdlm_cosine_left_to_right": (
        lambda **kw: MDLMAncestral(
            MDLMConfig(num_steps=3, schedule="cosine", policy="left_to_right", **kw)
        ),
        "mdlm",
        0,
    ),
    "mdlm_first_hitting": (lambda **kw: MDLMFirstHitting(FirstHittingConfig(**kw)), "mdlm", 0),
    "ar_cached": (lambda **kw: AR(ARConfig(kv_cache=True, **kw)), "ar", 1),
    "ar_uncached": (lambda **kw: AR(ARConfig(kv_cache=False, **kw)), "ar", 1),
}


def sample_with(name: str, table: torch.Tensor, seed: int, **numerics) -> torch.Tensor:
    factory, family, _ = SAMPLERS_UNDER_TEST[name]
    model = FixedLogitsModel(table, family, bos_index=BOS)
    result = factory(**numerics).sample(
        model, batch_size=N, seq_len=L, generator=torch.Generator().manual_seed(seed)
    )
    return result.tokens


def pooled_chi2(tokens: torch.Tensor, law: torch.Tensor, positions: range) -> tuple[float, int]:
    """Σ over positions of Σ_v (O − E)²/E over the ids with non-zero probability; and its dof."""
    chi2, dof = 0.0, 0
    for p in positions:
        support = law[p] > 0
        observed = torch.bincount(tokens[:, p], minlength=V).double()
        assert float(observed[~support].sum()) == 0, f"position {p}: a zero-probability id drawn"
        expected = law[p] * tokens.shape[0]
        chi2 += float(((observed - expected)[support] ** 2 / expected[support]).sum())
        dof += int(support.sum()) - 1
    return chi2, dof


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("name", list(SAMPLERS_UNDER_TEST))
def test_tokens_follow_the_softmax_of_their_row(name, temperature):
    offset = SAMPLERS_UNDER_TEST[name][2]
    table = position_table(L, V, seed=3)
    tokens = sample_with(name, table, seed=4, temperature=temperature)
    assert not (tokens == V - 1).any()
    law = token_law(table, temperature)
    if offset:
        assert bool((tokens[:, 0] == BOS).all())
        law = torch.cat([law[:1], law[:-1]])  # position p is drawn from row p − 1
    chi2, dof = pooled_chi2(tokens, law, range(offset, L))
    assert chi2 < stats.chi2.isf(P_FAIL, dof), (chi2, dof)


@pytest.mark.parametrize("name", list(SAMPLERS_UNDER_TEST))
def test_top_p_conventions_through_the_sampler(name):
    """Row law (0.5, 0.3, 0.15, 0.05, 0) and top_p = 0.7: ``hf`` keeps ids {0, 1} renormalised
    to (0.625, 0.375); ``strict`` keeps id 0 only.
    """
    offset = SAMPLERS_UNDER_TEST[name][2]
    row = torch.tensor([0.5, 0.3, 0.15, 0.05, 1e-30]).log()
    table = torch.cat([row, torch.tensor([20.0])]).expand(L, V).clone()
    strict = sample_with(name, table, seed=5, top_p=0.7, top_p_convention="strict")
    assert bool((strict[:, offset:] == 0).all())
    hf = sample_with(name, table, seed=6, top_p=0.7, top_p_convention="hf")
    law = torch.tensor([0.625, 0.375, 0, 0, 0, 0], dtype=torch.float64).expand(L, V)
    chi2, dof = pooled_chi2(hf, law, range(offset, L))
    assert chi2 < stats.chi2.isf(P_FAIL, dof), (chi2, dof)
