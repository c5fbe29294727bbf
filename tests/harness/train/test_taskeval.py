"""The greedy task decoder and exact-match accuracy.

Oracles: hand-worked decodes with a position-only fake denoiser (``tests.samplers.fakes``:
logits = table[position], so every argmax and every confidence is known in advance), and, for
real tiny networks, each family's training forward (the logits a decoded position would get in
the objective's own input) against :func:`next_token_logits`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import harness.train.objectives as obj
from harness.train.taskdata import EncodedTasks
from harness.train.taskeval import answer_ids, greedy_decode, next_token_logits, task_accuracy
from tests.conftest import TINY, tiny_model
from tests.harness.train.fake_tasks import FakeExample
from tests.samplers.fakes import FixedLogitsModel

V, M, EOS = 10, 9, 0  # the fake's vocabulary: ids 0 … 8, EOS = 0, mask = 9


def table(best: dict[int, tuple[int, float]], L: int = 8) -> torch.Tensor:
    """(L, V) logits: at position p, token best[p][0] with logit best[p][1], others 0."""
    t = torch.zeros(L, V)
    t[:, M] = 30.0  # a large mask logit: SUBS must remove it
    for p, (tok, logit) in best.items():
        t[p, tok] = logit
    return t


def prompt_rows(P: int, L: int = 8, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.full((n, L), 7)  # junk after the prompt: the decoder must ignore it
    rows[:, :P] = torch.arange(1, P + 1)
    rows[:, 0] = EOS  # BOS = EOS id, as in the shipped tokenizer
    return rows, torch.full((n,), P)


# ---------------------------------------------------------------------------------------------
# Hand-worked decodes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["mdlm", "esolm", "bd3lm"])
def test_left_to_right_decodes_argmaxes_until_eos(family):
    fake = FixedLogitsModel(table({3: (5, 4.0), 4: (6, 4.0), 5: (EOS, 4.0), 6: (2, 9.0)}),
                            family, block_size=2 if family == "bd3lm" else None)  # fmt: skip
    rows, P = prompt_rows(3)
    z, steps = greedy_decode(fake, rows, P, EOS)
    assert z[0].tolist() == [EOS, 2, 3, 5, 6, EOS, M, M]  # stops once the answer is determined
    assert steps.tolist() == [3] and len(fake.calls) == 3
    assert answer_ids(z, P, M, EOS) == [[5, 6]]


def test_ar_reads_the_logits_of_the_previous_row():
    fake = FixedLogitsModel(table({2: (5, 4.0), 3: (6, 4.0), 4: (EOS, 4.0)}), "ar")
    rows, P = prompt_rows(3)
    z, steps = greedy_decode(fake, rows, P, EOS, policy="confidence")  # AR ignores the policy
    assert z[0, :6].tolist() == [EOS, 2, 3, 5, 6, EOS] and steps.tolist() == [3]


def test_confidence_decodes_the_most_confident_mask_first_and_stops_when_determined():
    # Confidences (logit margins): pos 6 EOS 9 > pos 3 '5' 6 > pos 5 '4' 5 > pos 4 '6' 3.
    t = table({3: (5, 6.0), 4: (6, 3.0), 5: (4, 5.0), 6: (EOS, 9.0), 7: (8, 1.0)})
    fake = FixedLogitsModel(t, "mdlm")
    rows, P = prompt_rows(3)
    z, steps = greedy_decode(fake, rows, P, EOS, policy="confidence")
    # Order 6, 3, 5, 4; after pos 4 the EOS at 6 has no mask before it: determined, 4 calls.
    assert z[0].tolist() == [EOS, 2, 3, 5, 6, 4, EOS, M] and steps.tolist() == [4]
    assert answer_ids(z, P, M, EOS) == [[5, 6, 4]]


def test_bd3lm_confidence_stays_inside_the_first_unfinished_block():
    # Block size 2, prompt 3: the current block is [2, 4) with mask 3; pos 6 is more confident
    # but lies in a later block, so pos 3 goes first, then block [4, 6): 4 (margin 3) vs 5 (5).
    t = table({3: (5, 1.0), 4: (6, 3.0), 5: (EOS, 5.0), 6: (2, 9.0)})
    fake = FixedLogitsModel(t, "bd3lm", block_size=2)
    rows, P = prompt_rows(3)
    z, steps = greedy_decode(fake, rows, P, EOS, policy="confidence")
    assert z[0].tolist() == [EOS, 2, 3, 5, 6, EOS, M, M] and steps.tolist() == [3]
    fed = [c[3][0] for c in fake.calls]
    assert (fed[1][3], fed[1][5]) == (5, M)  # 2nd call: block [2, 4) done, 5 still masked
    assert (fed[2][4], fed[2][5]) == (M, EOS)  # 3rd call: the more confident 5 went first


def test_budget_caps_calls_and_rows_finish_independently():
    t = table({p: (3, 4.0) for p in range(2, 8)})  # never an EOS
    t[4, EOS] = 8.0  # … except at position 4
    fake = FixedLogitsModel(t, "mdlm")
    rows = torch.full((2, 8), 7)
    rows[:, 0] = EOS
    P = torch.tensor([2, 5])  # row 0 meets the EOS at 4; row 1 starts after it
    z, steps = greedy_decode(fake, rows, P, EOS, max_steps=2)
    assert steps.tolist() == [2, 2]
    assert z[0].tolist() == [EOS, 7, 3, 3, M, M, M, M]  # budget spent before position 4
    z, steps = greedy_decode(fake, rows, P, EOS)
    assert steps.tolist() == [3, 3] and z[0, :5].tolist() == [EOS, 7, 3, 3, EOS]
    assert answer_ids(z, P, M, EOS) == [[3, 3], [3, 3, 3]]  # row 1 ran to the end of the row
    assert (z[:, :2] == rows[:, :2]).all() and z[1, :5].tolist() == rows[1, :5].tolist()


def test_task_accuracy_is_exact_match_per_cell():
    t = table({3: (5, 4.0), 4: (6, 4.0), 5: (EOS, 4.0)})
    fake = FixedLogitsModel(t, "mdlm")
    text = {5: "a", 6: "b"}
    ex = [FakeExample("x", 1, "", "ab", "0"), FakeExample("x", 1, "", "ab ", "1"),
          FakeExample("y", 2, "", "ab", "2")]  # fmt: skip
    rows, P = prompt_rows(3, n=3)
    enc = EncodedTasks(rows.numpy(), P.numpy(), np.array([2, 3, 2]), tuple(ex))
    acc = task_accuracy(fake, enc, lambda ids: "".join(text[i] for i in ids), EOS, batch_size=2)
    assert acc.per_cell == {"x:1": 0.5, "y:2": 1.0} and acc.overall == pytest.approx(2 / 3)
    assert [p[1:] for p in acc.predictions] == [("ab", True), ("ab", False), ("ab", True)]


# ---------------------------------------------------------------------------------------------
# Real networks: the decoder's logits are the training forward's
# ---------------------------------------------------------------------------------------------

Mt = TINY["vocab_size"] - 1


def partial_rows(seed: int = 0):
    """4 rows of 16: prompts of 3, 5, 6, 9; some decoded tokens after them, masks elsewhere."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, Mt, (4, 16), generator=g)
    P = torch.tensor([3, 5, 6, 9])
    z = x.clone()
    for i, p in enumerate(P.tolist()):
        z[i, p:] = Mt
        z[i, p : p + i] = x[i, p : p + i]  # row i has i decoded tokens, left to right
    return x, z, P


def test_bd3lm_block_logits_equal_the_noisy_half_of_the_training_input():
    m = tiny_model("bd3lm", block_size=4)
    x, z, P = partial_rows()
    got = next_token_logits(m, z, "bd3lm", block_size=4)
    want = obj.bd3lm_forward(m, z, z, 4)  # [z ; z]: the clean half only matters before the block
    for i in range(4):
        first = int((z[i] == Mt).nonzero()[0])
        blk = slice(first // 4 * 4, first // 4 * 4 + 4)
        assert_close(got[i, blk], want[i, blk])


def test_esolm_mask_logits_equal_the_causal_training_forward_with_that_mask_first():
    m = tiny_model("esolm")
    x, z, P = partial_rows()
    L = z.shape[1]
    pos = torch.arange(L)
    key = torch.where(pos < P[:, None], pos - 2 * L, pos + 2 * L)
    for i in range(4):  # decoded tokens: step s at position P + s
        d = (z[i] != Mt) & (pos >= P[i])
        key[i, d] = pos[d] - P[i] - L
    got = next_token_logits(m, z, "esolm", key=key)
    for i in range(4):
        clean = [int(j) for j in torch.argsort(key[i]) if z[i, j] != Mt]
        for q in (z[i] == Mt).nonzero().flatten().tolist():
            order = torch.tensor(clean + [q] + [j for j in range(L) if j not in clean + [q]])
            out = obj.esolm_forward(m, z[i : i + 1, order], order[None])
            assert_close(got[i, q], out[0, len(clean)])


def test_ar_and_mdlm_logits():
    x, z, P = partial_rows()
    ar = tiny_model("ar")
    got = next_token_logits(ar, z, "ar")
    for i in range(4):
        j = int((z[i] == Mt).nonzero()[0])
        assert_close(got[i, j], ar(z[i : i + 1, :j], is_causal=True)[0, -1])
    md = tiny_model("mdlm")
    assert_close(next_token_logits(md, z, "mdlm"), md(z, is_causal=False))


@pytest.mark.parametrize("family", ["mdlm", "bd3lm", "esolm", "ar"])
@pytest.mark.parametrize("policy", ["left_to_right", "confidence"])
def test_real_network_decode_keeps_the_prompt_and_fills_one_token_per_call(family, policy):
    m = tiny_model(family, block_size=4) if family == "bd3lm" else tiny_model(family)
    x, _, P = partial_rows(1)
    z, steps = greedy_decode(m, x, P, eos_id=0, policy=policy)
    pos = torch.arange(16)
    assert (z[pos[None] < P[:, None]] == x[pos[None] < P[:, None]]).all()
    decoded = ((z != Mt) & (pos[None] >= P[:, None])).sum(1)
    assert decoded.tolist() == steps.tolist()
    assert (steps >= 1).all()
