"""The ``margin`` and ``entropy`` unmasking policies on hand-built distributions.

Three positions over 5 tokens, chosen so that each rule picks a different one first:

| position | p                              | top-1 | margin | entropy (nats) |
|----------|--------------------------------|-------|--------|----------------|
| A = 0    | .48 .46 .02 .02 .02            | .48   | .02    | 0.944          |
| B = 1    | .40 .15 .15 .15 .15            | .40   | .25    | 1.505          |
| C = 2    | .47 .47 .06 0 0                | .47   | 0      | 0.879          |

confidence (top-1 as the proposal) → A first, margin → B, entropy (lowest) → C. The expected
scores are recomputed here in plain Python (``math``), independently of the policies' torch code.
"""

from __future__ import annotations

import math

import pytest
import torch

from samplers import POLICIES
from samplers.mdlm_ancestral import MDLMAncestral, MDLMConfig
from samplers.mdlm_semiar import MDLMBlocks, MDLMBlocksConfig
from samplers.schedules import policy_keys
from tests.samplers.fake_models_b import fixed_model

PROBS = [
    [0.48, 0.46, 0.02, 0.02, 0.02],
    [0.40, 0.15, 0.15, 0.15, 0.15],
    [0.47, 0.47, 0.06, 0.0, 0.0],
]
A, B, C = 0, 1, 2


def log_probs() -> torch.Tensor:
    """(1, 3, 5) float64 log-probabilities (log 0 = −inf: tokens outside the support)."""
    return torch.tensor(PROBS, dtype=torch.float64).log()[None]


def hand_entropy(p: list[float]) -> float:
    return -sum(q * math.log(q) for q in p if q > 0)


def hand_margin(p: list[float]) -> float:
    top = sorted(p, reverse=True)
    return top[0] - top[1]


def keys(name: str) -> torch.Tensor:
    lp = log_probs()
    return policy_keys(POLICIES.get(name)(), lp, lp.argmax(-1))


def test_scores_equal_the_hand_values():
    torch.testing.assert_close(
        keys("margin")[0], torch.tensor([hand_margin(p) for p in PROBS], dtype=torch.float64)
    )
    torch.testing.assert_close(
        keys("entropy")[0], torch.tensor([-hand_entropy(p) for p in PROBS], dtype=torch.float64)
    )
    torch.testing.assert_close(keys("confidence")[0], torch.tensor([0.48, 0.40, 0.47]).double())
    assert [round(hand_entropy(p), 3) for p in PROBS] == [0.944, 1.505, 0.879]


@pytest.mark.parametrize(
    ("name", "first", "first_two"),
    [("confidence", A, {A, C}), ("margin", B, {B, A}), ("entropy", C, {C, A})],
)
def test_each_policy_chooses_its_known_positions(name, first, first_two):
    policy = POLICIES.get(name)()
    masked = torch.ones(1, 3, dtype=torch.bool)
    g = torch.Generator()
    for k, want in ((1, {first}), (2, first_two), (3, {A, B, C})):
        sel = policy.select(keys(name), masked, torch.tensor([k]), g)
        assert set(sel[0].nonzero().flatten().tolist()) == want, (name, k)
    unmasked_first = masked.clone()
    unmasked_first[0, first] = False  # an already clean position is never chosen
    sel = policy.select(keys(name), unmasked_first, torch.tensor([1]), g)
    assert set(sel[0].nonzero().flatten().tolist()) == first_two - {first}


def commit_order(sampler, seq_len: int = 3) -> list[int]:
    """Positions in the order a one-token-per-call sampler commits them (from the call log)."""
    table = torch.full((seq_len, 6), float("-inf"))
    table[:, :5] = log_probs()[0, :seq_len].float()
    table[:, 5] = 20.0  # the mask logit, removed by SUBS
    model = fixed_model("mdlm", table)
    out = sampler.sample(model, batch_size=1, seq_len=seq_len, generator=torch.Generator())
    canvases = [c.fed[0] for c in model.calls] + [out.tokens[0]]
    order = []
    for before, after in zip(canvases, canvases[1:], strict=False):
        (changed,) = (before != after).nonzero(as_tuple=True)
        order += changed.tolist()
    return order


@pytest.mark.parametrize(("name", "order"), [("margin", [B, A, C]), ("entropy", [C, A, B])])
def test_samplers_commit_in_the_policy_order(name, order):
    """mdlm (even schedule, T = 3) and mdlm_blocks (one block, T′ = 3) commit one position per
    call; the position-only logits make the order the policy's ranking, whatever is drawn."""
    assert commit_order(MDLMAncestral(MDLMConfig(num_steps=3, schedule="even", policy=name))) == (
        order
    )
    cfg = MDLMBlocksConfig(block_length=3, steps_per_block=3, policy=name)
    assert commit_order(MDLMBlocks(cfg)) == order


def test_policies_are_registered_non_adaptive_and_read_scores():
    for name in ("margin", "entropy"):
        cls = POLICIES.get(name)
        assert cls.name == name and not cls.adaptive and cls.uses_confidence
        assert callable(cls().score)
