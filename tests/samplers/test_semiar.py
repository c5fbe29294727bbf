"""``mdlm_blocks``: the LLaDA / Fast-dLLM semi-autoregressive block loop.

Oracles:
* an independent transcription of LLaDA's ``generate`` loop (``llada_oracle`` below, written
  from the reference's structure: per block, ``get_num_transfer_tokens`` = an even split, per
  step a full-canvas forward, Gumbel-max proposals, low-confidence top-k restricted to the
  block) run with the same generator on the fp32 tiny DiT: identical tokens;
* the call log of a fake model: blocks complete strictly left to right, ⌈n/T′⌉ / ⌊n/T′⌋ commits
  per step inside the block only, exactly min(n_j, T′) calls per block;
* Fast-dLLM's threshold rule on hand-built logits: a peaked table (confidence ≈ 1 > τ) fills a
  block in one call, a flat one (confidence 1/(V − 1) < τ) commits one token per call.
"""

from __future__ import annotations

import re

import pytest
import torch

from dlmcore.configio import ConfigError, from_dict
from samplers import SAMPLERS
from samplers.base import gumbel_argmax, subs_log_probs
from samplers.mdlm_semiar import MDLMBlocks, MDLMBlocksConfig, block_bounds
from tests.conftest import tiny_model
from tests.samplers.fake_models_b import fixed_model

V, L = 9, 16
MASK = V - 1


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blocks(**kw) -> MDLMBlocks:
    return MDLMBlocks(MDLMBlocksConfig(**kw))


def prompt_of(b: int, P: int, vocab: int = V, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab - 1, (b, P), generator=gen(50 + seed))


def fake(seed: int = 0, scale: float = 1.5):
    t = scale * torch.randn(L, V, generator=gen(seed))
    t[:, -1] = 10.0
    return fixed_model("mdlm", t)


def even_split(n: int, steps: int) -> list[int]:
    """LLaDA's get_num_transfer_tokens for one row: base + 1 for the first n mod T′ steps."""
    base, rem = divmod(n, steps)
    return [base + (i < rem) for i in range(steps)]


def llada_oracle(model, prompt, seq_len, block_length, steps_per_block, generator):
    """LLaDA ``generate`` with low-confidence remasking, transcribed loop for loop.

    Per block: even split of its masks over T′ steps; per step: full-canvas forward, SUBS
    log-softmax in float64, Gumbel-max proposal for the block rows, confidence = p(proposal),
    the top-k masked block positions commit. (Noise is drawn for the block rows only, as
    dlmbench does; LLaDA's −∞ confidence outside the block makes the rest irrelevant.)
    """
    b, P = prompt.shape
    x = torch.full((b, seq_len), model.config.mask_id, dtype=torch.long)
    x[:, :P] = prompt
    for start in range(P, seq_len, block_length):
        end = min(start + block_length, seq_len)
        for k in even_split(end - start, steps_per_block):
            if k == 0:
                continue
            log_p = subs_log_probs(model(x)[:, start:end], model.config.mask_id)
            x0 = gumbel_argmax(log_p, generator)
            conf = log_p.gather(-1, x0[..., None]).squeeze(-1).exp()
            conf = torch.where(x[:, start:end] == model.config.mask_id, conf, -torch.inf)
            for r in range(b):
                idx = torch.topk(conf[r], k).indices
                x[r, start + idx] = x0[r, idx]
    return x


# ---------------------------------------------------------------------------------------------
# Equal to LLaDA's loop
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("P", "B", "T"), [(0, 4, 4), (3, 4, 2), (5, 8, 3), (2, 5, 5)])
def test_equals_an_independent_transcription_of_llada_generate(P, B, T):
    """Same generator, fp32 tiny DiT: identical tokens (P = 0 is the unconditional canvas)."""
    model = tiny_model("mdlm", seed=1)
    for seed in (0, 1):
        prompt = prompt_of(2, P, vocab=model.config.vocab_size, seed=seed)
        ours = blocks(block_length=B, steps_per_block=T).sample(
            model, batch_size=2, seq_len=L, generator=gen(seed), prompt=prompt if P else None
        )
        want = llada_oracle(model, prompt, L, B, T, gen(seed))
        assert torch.equal(ours.tokens, want), (P, B, T, seed)


# ---------------------------------------------------------------------------------------------
# The block loop's structure, read off the fake's call log
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["random", "left_to_right", "confidence", "margin", "entropy"])
@pytest.mark.parametrize(("P", "B", "T"), [(4, 4, 4), (3, 4, 2), (2, 6, 4), (1, 5, 8)])
def test_blocks_fill_left_to_right_with_the_even_split(policy, P, B, T):
    """Between consecutive calls only the current block changes, by exactly the even split's
    count per row; block j is clean before block j + 1 changes; calls per block = min(n_j, T′),
    including a shorter last block when B does not divide L − P."""
    b = 3
    model = fake()
    prompt = prompt_of(b, P)
    sampler = blocks(block_length=B, steps_per_block=T, policy=policy)
    out = sampler.sample(model, batch_size=b, seq_len=L, generator=gen(0), prompt=prompt)
    bounds = block_bounds(P, L, B)
    assert bounds[-1][1] == L and all(e - s == B for s, e in bounds[:-1])
    canvases = [c.fed for c in model.calls] + [out.tokens]
    assert all(torch.equal(c[:, :P], prompt) for c in canvases)
    call = 0
    for s, e in bounds:
        counts = [k for k in even_split(e - s, T) if k]
        for k in counts:
            before, after = canvases[call], canvases[call + 1]
            assert model.calls[call].head_rows == e - s
            changed = before != after
            assert not changed[:, :s].any() and not changed[:, e:].any(), "outside the block"
            assert torch.equal(changed.sum(-1), torch.full((b,), k)), (call, k)
            assert bool((before[changed] == MASK).all()), "a committed token was rewritten"
            call += 1
        assert not (canvases[call][:, s:e] == MASK).any(), "block not clean before the next"
    assert call == out.nfe_total == len(model.calls) == sum(min(e - s, T) for s, e in bounds)
    assert out.info["nfe_expected"] == out.nfe_total
    assert out.calls == [(L, L, L, e - s) for s, e in bounds for _ in range(min(e - s, T))]
    assert out.calls == sampler.expected_calls(model.config, batch_size=b, seq_len=L, prompt_len=P)


def test_zero_count_steps_make_no_call():
    """T′ = 8 > B = 4: LLaDA would call 8 times per block; the no-change cache calls 4 times."""
    out = blocks(block_length=4, steps_per_block=8).sample(
        fake(), batch_size=2, seq_len=L, generator=gen(0)
    )
    assert out.nfe_total == 16 and out.step_sizes == [1.0] * 16


def test_one_block_is_plain_confidence_decoding():
    """B ≥ L − P: a single block, T′ calls."""
    out = blocks(block_length=64, steps_per_block=5).sample(
        fake(), batch_size=2, seq_len=L, generator=gen(0), prompt=prompt_of(2, 6)
    )
    assert out.info["n_blocks"] == 1 and out.nfe_total == 5
    assert out.step_sizes == [2.0] * 5  # 10 masks over 5 steps


# ---------------------------------------------------------------------------------------------
# Fast-dLLM threshold
# ---------------------------------------------------------------------------------------------


def test_threshold_fills_a_confident_block_in_one_call():
    """Peaked logits (confidence ≈ 1 − 8e−27 > τ = 0.9): one call per block."""
    table = torch.zeros(L, V)
    table[torch.arange(L), torch.arange(L) % (V - 1)] = 60.0
    model = fixed_model("mdlm", table)
    sampler = blocks(block_length=4, steps_per_block=4, policy="threshold", policy_threshold=0.9)
    out = sampler.sample(model, batch_size=2, seq_len=L, generator=gen(0), prompt=prompt_of(2, 4))
    assert out.nfe_total == 3 and out.step_sizes == [4.0] * 3
    assert torch.equal(out.tokens[:, 4:], (torch.arange(4, L) % (V - 1)).expand(2, -1))


def test_threshold_commits_one_token_per_call_when_unsure():
    """Flat logits: confidence 1/8 < τ, so only the floor max(k, 1) = 1 commits: NFE = L − P."""
    model = fixed_model("mdlm", torch.zeros(L, V))
    sampler = blocks(block_length=4, steps_per_block=4, policy="threshold")
    out = sampler.sample(model, batch_size=2, seq_len=L, generator=gen(0), prompt=prompt_of(2, 4))
    assert out.nfe_total == L - 4 and out.step_sizes == [1.0] * (L - 4)
    assert out.info["policy"] == "threshold"


def test_threshold_between_the_two_mixes_counts():
    """Even positions confident, odd ones flat. Per block of 4 (k = 1 per step): call 1 commits
    the 2 confident positions, calls 2 and 3 one flat position each (the floor): 3 calls."""
    table = torch.zeros(L, V)
    confident = torch.arange(L) % 2 == 0
    table[confident, 0] = 60.0
    model = fixed_model("mdlm", table)
    sampler = blocks(block_length=4, steps_per_block=4, policy="threshold")
    out = sampler.sample(model, batch_size=1, seq_len=L, generator=gen(0))
    assert out.step_sizes == [2.0, 1.0, 1.0] * 4 and out.nfe_total == 12


# ---------------------------------------------------------------------------------------------
# NFE expectation with a random schedule, config errors, registry
# ---------------------------------------------------------------------------------------------


def test_loglinear_expectation_per_block():
    """E[calls] = Σ_blocks T′(1 − (1 − 1/T′)^(b·n_j)) (batch no-change cache)."""
    sampler = blocks(block_length=5, steps_per_block=4, schedule="loglinear", policy="random")
    out = sampler.sample(fake(), batch_size=2, seq_len=L, generator=gen(0), prompt=prompt_of(2, 3))
    want = sum(4 * (1 - (1 - 1 / 4) ** (2 * n)) for n in (5, 5, 3))
    assert out.info["nfe_expected"] == pytest.approx(want, rel=1e-12)
    assert out.info["nfe_expected_per_sequence"] == pytest.approx(
        sum(4 * (1 - (1 - 1 / 4) ** n) for n in (5, 5, 3)), rel=1e-12
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"block_length": 0}, "'block_length' is 0"),
        ({"steps_per_block": -1}, "'steps_per_block' is -1"),
        ({"policy": "confidense"}, "confidence"),
        ({"policy": "threshold", "profile": True}, "adaptive"),
        ({"policy": "random", "policy_threshold": 0.5}, "takes no 'threshold'"),
        ({"policy": "threshold", "policy_threshold": 1.5}, "(0, 1]"),
    ],
)
def test_bad_configs_are_refused(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_dict(MDLMBlocksConfig, data)


def test_registered_for_the_mdlm_family():
    assert SAMPLERS.get("mdlm_blocks") is MDLMBlocks and MDLMBlocks.families == ("mdlm",)
    assert blocks().cache_kind() is None
