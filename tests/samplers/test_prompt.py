"""Prompted (conditional) generation in every sampler.

Oracles:
* unconditional runs are pinned: fingerprints (tokens, counters, a digest of every call's
  inputs) taken from the implementation before ``prompt=`` existed (``unconditional_pins.py``);
* cached == uncached tokens with prompts (fp32 tiny DiT): BD3-LM efficient / reference / none,
  Eso-LM and the interleaved sampler with and without the K/V cache, AR with and without;
* a fake whose output is a copy of the prompt (``CopyPromptModel``), so the generation is known
  exactly from the prompt, and the fake fails if a call could not see the prompt;
* NFE and call records against their analytic values with n = L − P generated positions;
* the calls each sampler makes with a prompt, read off the fake's call log (prefill, store
  passes, the first Eso-LM call carrying the prompt).
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from dlmcore.errors import UserError
from samplers import SAMPLERS, SCHEDULES, SamplerError
from samplers.base import check_prompt
from samplers.esolm import expected_nfe as eso_expected_nfe
from tests.conftest import tiny_model
from tests.samplers.fake_models_b import copy_model, fixed_model
from tests.samplers.unconditional_pins import PIN_FILE, fingerprint, pinned_cases

V, L = 9, 16
MASK = V - 1
LOGLINEAR = SCHEDULES.get("loglinear")()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(name: str, **changes):
    cls = SAMPLERS.get(name)
    return cls(cls.config_class(**changes))


def prompt_of(b: int, P: int, seed: int = 0, vocab: int = V) -> torch.Tensor:
    """(b, P) prompt ids in [0, V − 2] (never the mask)."""
    return torch.randint(0, vocab - 1, (b, P), generator=gen(100 + seed))


def table(seed: int = 7) -> torch.Tensor:
    t = 1.5 * torch.randn(L, V, generator=gen(seed))
    t[:, -1] = 10.0
    return t


def fake_for(sampler, **kw):
    block = getattr(sampler.config, "block_size", None)
    return fixed_model(sampler.families[0], table(), block_size=block, **kw)


# Sampler configurations exercised with prompts: (id, name, config changes, prompt lengths).
POLICIES_ALL = ("random", "left_to_right", "confidence", "margin", "entropy", "threshold")
CASES = [
    *[(f"mdlm-{p}", "mdlm", {"num_steps": 8, "policy": p}) for p in POLICIES_ALL],
    ("mdlm-even", "mdlm", {"num_steps": 8, "schedule": "even"}),
    ("first_hitting", "mdlm_first_hitting", {}),
    *[
        (f"mdlm_blocks-{p}", "mdlm_blocks", {"block_length": 4, "steps_per_block": 2, "policy": p})
        for p in POLICIES_ALL
    ],
    *[
        (f"bd3lm-{c}", "bd3lm", {"block_size": 4, "steps_per_block": 2, "cache": c})
        for c in ("efficient", "reference", "none")
    ],
    ("bd3lm-fh-margin", "bd3lm", {"block_size": 4, "mode": "first_hitting", "policy": "margin"}),
    ("bd3lm-entropy", "bd3lm", {"block_size": 2, "policy": "entropy", "steps_per_block": 3}),
    *[(f"esolm-kv{kv}", "esolm", {"num_steps": 8, "kv_cache": kv}) for kv in (True, False)],
    ("esolm-a0.5", "esolm", {"num_steps": 8, "alpha0_eval": 0.5}),
    *[(f"esolm_block-kv{kv}", "esolm_block", {"num_steps": 2, "kv_cache": kv}) for kv in (1, 0)],
    ("esolm_block-a0.5", "esolm_block", {"num_steps": 2, "alpha0_eval": 0.5}),
    *[(f"ar-kv{kv}", "ar", {"kv_cache": kv}) for kv in (True, False)],
]
IDS = [c[0] for c in CASES]
PROMPT_LENS = (1, 6)  # a partial first block, and one whole BD3-LM block plus a partial one


# ---------------------------------------------------------------------------------------------
# Unconditional runs did not change
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", sorted(pinned_cases()))
def test_unconditional_runs_match_the_pre_prompt_implementation(case_id):
    """Tokens, NFE, call records and every call's inputs equal the pinned pre-change run."""
    pinned = json.loads(PIN_FILE.read_text())[case_id]
    assert fingerprint(*pinned_cases()[case_id]) == pinned


@pytest.mark.parametrize(("case_id", "name", "changes"), CASES, ids=IDS)
def test_prompt_none_is_the_unconditional_run(case_id, name, changes):
    """``prompt=None`` passed explicitly equals omitting it; info says P = 0, L generated."""
    sampler = make(name, **changes)
    bos = {"bos_index": 7} if name in ("ar", "bd3lm") else {}
    a = sampler.sample(fake_for(sampler, **bos), batch_size=2, seq_len=L, generator=gen(1))
    b = sampler.sample(
        fake_for(sampler, **bos), batch_size=2, seq_len=L, generator=gen(1), prompt=None
    )
    assert torch.equal(a.tokens, b.tokens) and a.calls == b.calls
    assert (a.info["prompt_len"], a.info["gen_tokens"]) == (0, L)


# ---------------------------------------------------------------------------------------------
# Every sampler: the prompt survives, runs repeat, info records P
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("P", PROMPT_LENS)
@pytest.mark.parametrize(("case_id", "name", "changes"), CASES, ids=IDS)
def test_prompt_survives_and_runs_repeat(case_id, name, changes, P):
    if name == "esolm_block" and (L - P) % changes["num_steps"]:
        P += 1  # esolm_block needs num_steps | L − P
    sampler = make(name, **changes)
    prompt = prompt_of(3, P)
    runs = [
        sampler.sample(fake_for(sampler), batch_size=3, seq_len=L, generator=gen(5), prompt=prompt)
        for _ in range(2)
    ]
    first, again = runs
    assert torch.equal(first.tokens[:, :P], prompt), "the prompt changed"
    assert not (first.tokens == MASK).any(), "a mask survived"
    assert torch.equal(first.tokens, again.tokens) and first.calls == again.calls
    assert (first.info["prompt_len"], first.info["gen_tokens"]) == (P, L - P)
    assert first.token_forwards == sum(c[0] for c in first.calls)
    assert len(first.calls) == first.nfe_total


@pytest.mark.parametrize(("case_id", "name", "changes"), CASES, ids=IDS)
def test_a_prompted_plan_replays(case_id, name, changes):
    """One plan executed twice (warm-up, repeats) gives the same tokens and calls."""
    sampler = make(name, **changes)
    model = fake_for(sampler)
    prompt = prompt_of(2, 4)
    plan = sampler.plan(model, batch_size=2, seq_len=L, generator=gen(0), prompt=prompt)
    r1, r2 = (sampler.execute(model, plan, generator=gen(8)) for _ in range(2))
    assert torch.equal(r1.tokens, r2.tokens) and r1.calls == r2.calls
    assert torch.equal(r1.tokens[:, :4], prompt)


@pytest.mark.parametrize(("case_id", "name", "changes"), CASES, ids=IDS)
def test_generation_is_a_copy_of_the_prompt(case_id, name, changes):
    """With the copy fake, token q is prompt[q mod P]: the prompt alone determines the output.

    Two different prompts give their own copies, so the prompt really conditions the samples;
    the fake also asserts that every call could see the prompt positions it copies.
    """
    P = 4 if name == "esolm_block" else 5
    sampler = make(name, **changes)
    src = torch.arange(L) % P
    for seed in (0, 1):
        prompt = prompt_of(2, P, seed)
        model = copy_model(sampler.families[0], V, L, period=P)
        out = sampler.sample(model, batch_size=2, seq_len=L, generator=gen(seed), prompt=prompt)
        assert torch.equal(out.tokens, prompt[:, src]), (seed, out.tokens, prompt)


@pytest.mark.parametrize(("case_id", "name", "changes"), CASES, ids=IDS)
def test_profile_makes_the_same_calls_with_a_prompt(case_id, name, changes):
    """Batch 1, same seed: profile mode replays exactly the calls of the real run."""
    if name in ("mdlm", "mdlm_blocks", "bd3lm") and changes.get("policy") == "threshold":
        pytest.skip("adaptive policy: profile mode is refused (tested in the config tests)")
    sampler, profiler = make(name, **changes), make(name, **changes, profile=True)
    prompt = prompt_of(1, 6)
    kw = dict(batch_size=1, seq_len=L, prompt=prompt)
    full = sampler.sample(fake_for(sampler), generator=gen(3), **kw)
    model = fake_for(profiler)
    prof = profiler.sample(model, generator=gen(3), **kw)
    assert prof.calls == full.calls and prof.nfe_total == full.nfe_total
    assert torch.equal(prof.tokens[:, :6], prompt)


# ---------------------------------------------------------------------------------------------
# Cached == uncached with prompts (fp32 tiny DiT, non-zero weights)
# ---------------------------------------------------------------------------------------------


def same_tokens(name: str, variants: list[dict], model, P: int, b: int = 2, seeds=(0, 1)):
    """Every variant gives the same tokens and denoising NFE as the first, per seed."""
    for seed in seeds:
        prompt = prompt_of(b, P, seed, vocab=model.config.vocab_size)
        outs = [
            make(name, **v).sample(
                model, batch_size=b, seq_len=L, generator=gen(seed), prompt=prompt
            )
            for v in variants
        ]
        for v, out in zip(variants[1:], outs[1:], strict=True):
            assert torch.equal(out.tokens, outs[0].tokens), (v, seed)
            assert out.nfe_denoise == outs[0].nfe_denoise
        assert torch.equal(outs[0].tokens[:, :P], prompt)


@pytest.mark.parametrize("P", [3, 4, 6, 9])
@pytest.mark.parametrize(
    ("mode", "policy"),
    [("ancestral", "random"), ("ancestral", "margin"), ("first_hitting", "confidence")],
)
def test_bd3lm_caches_equal_the_oracle_with_prompts(P, mode, policy):
    """P = 3: partial block 0; 4: one whole block (prefill); 6 and 9: prefill + partial block."""
    model = tiny_model("bd3lm", seed=2, bos_index=0, block_size=4)
    base = {"block_size": 4, "steps_per_block": 3, "mode": mode, "policy": policy}
    same_tokens(
        "bd3lm", [{**base, "cache": c} for c in ("none", "efficient", "reference")], model, P
    )


@pytest.mark.parametrize("P", [6, 13])
def test_bd3lm_sliding_window_with_a_prompt_equals_the_oracle(P):
    """W = 8 rows: P = 6 prefills rows [0, 4); P = 13 starts past the window (rows [8, 12))."""
    model = tiny_model("bd3lm", seed=3, block_size=4)
    base = {"block_size": 4, "steps_per_block": 2, "context_window": 8}
    same_tokens(
        "bd3lm", [{**base, "cache": c} for c in ("none", "efficient", "reference")], model, P
    )


@pytest.mark.parametrize("P", [1, 5, 11])
@pytest.mark.parametrize("alpha0", [1.0, 0.5])
def test_esolm_cache_equals_the_oracle_with_prompts(P, alpha0):
    model = tiny_model("esolm", seed=4)
    base = {"num_steps": 4, "alpha0_eval": alpha0}
    same_tokens("esolm", [{**base, "kv_cache": kv} for kv in (False, True)], model, P)


@pytest.mark.parametrize(("P", "S"), [(4, 4), (8, 2), (13, 3)])
def test_esolm_block_cache_equals_the_oracle_with_prompts(P, S):
    model = tiny_model("esolm", seed=5)
    for alpha0 in (1.0, 0.5):
        base = {"num_steps": S, "alpha0_eval": alpha0}
        same_tokens("esolm_block", [{**base, "kv_cache": kv} for kv in (False, True)], model, P)


@pytest.mark.parametrize("P", [1, 4, 15])
def test_ar_cache_equals_the_oracle_with_prompts(P):
    model = tiny_model("ar", seed=6)  # no BOS needed: the prompt is the prefix
    same_tokens("ar", [{"kv_cache": False}, {"kv_cache": True}], model, P, seeds=(0, 1, 2))


# ---------------------------------------------------------------------------------------------
# NFE and the calls made, given P
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("P", [1, 7, 15])
def test_exact_nfe_given_the_prompt(P):
    """Samplers whose NFE is fixed: first-hitting L − P, AR L − P, even-schedule MDLM
    min(L − P, T); their call records equal ``expected_calls(prompt_len=P)``."""
    prompt = prompt_of(2, P)
    cases = [
        (make("mdlm_first_hitting"), L - P),
        (make("ar"), L - P),
        (make("ar", kv_cache=False), L - P),
        (make("mdlm", num_steps=8, schedule="even"), min(L - P, 8)),
    ]
    for sampler, nfe in cases:
        model = fake_for(sampler)
        out = sampler.sample(model, batch_size=2, seq_len=L, generator=gen(0), prompt=prompt)
        assert out.nfe_total == out.nfe_denoise == nfe == len(model.calls), sampler.name
        assert out.info["nfe_expected"] == nfe
        assert out.calls == sampler.expected_calls(
            model.config, batch_size=2, seq_len=L, prompt_len=P
        )


def test_ar_prefills_the_prompt_in_one_call():
    """Cached: one call over the P prompt rows at start 0, then one token per call."""
    P = 5
    sampler = make("ar")
    model = fake_for(sampler)
    prompt = prompt_of(2, P)
    sampler.sample(model, batch_size=2, seq_len=L, generator=gen(0), prompt=prompt)
    got = [(c.method, c.fed.shape[1], c.start, c.head_rows) for c in model.calls]
    want = [("forward_cached", P, 0, 1)] + [("forward_cached", 1, i, 1) for i in range(P, L - 1)]
    assert got == want
    assert torch.equal(model.calls[0].fed, prompt)


def test_mdlm_nfe_law_counts_generated_positions_only():
    """E[NFE] = T(1 − (1 − 1/T)^(b(L − P))) in info; the mean of 300 runs (b = 1, fake model)
    lies within 4.42 standard errors of it (false-failure ≈ 1e-5, normal approximation)."""
    T, P, runs = 16, 10, 300
    n = L - P
    sampler = make("mdlm", num_steps=T)
    prompt = prompt_of(1, P)
    model = fake_for(sampler)
    outs = [
        sampler.sample(model, batch_size=1, seq_len=L, generator=gen(s), prompt=prompt)
        for s in range(runs)
    ]
    q1, q2 = (1 - 1 / T) ** n, (1 - 2 / T) ** n
    mean, var = T * (1 - q1), T * q1 * (1 - q1) + T * (T - 1) * (q2 - q1 * q1)
    assert outs[0].info["nfe_expected"] == pytest.approx(mean, rel=1e-12)
    got = sum(o.nfe_denoise for o in outs) / runs
    assert abs(got - mean) < 4.42 * math.sqrt(var / runs), (got, mean)
    b4 = sampler.sample(model, batch_size=4, seq_len=L, generator=gen(0), prompt=prompt_of(4, P))
    assert b4.info["nfe_expected"] == pytest.approx(T * (1 - (1 - 1 / T) ** (4 * n)), rel=1e-12)


def test_mdlm_no_change_cache_holds_with_a_prompt():
    """Each call follows a change; masks strictly decrease; the prompt is fed clean every call."""
    P = 6
    sampler = make("mdlm", num_steps=32)
    model = fake_for(sampler)
    prompt = prompt_of(3, P)
    plan = sampler.plan(model, batch_size=3, seq_len=L, generator=gen(2), prompt=prompt)
    out = sampler.execute(model, plan, generator=gen(2))
    assert out.nfe_total == len(model.calls) == len(set(plan.commit_step.flatten().tolist()))
    masks = [int((c.fed == MASK).sum()) for c in model.calls] + [0]
    assert masks[0] == 3 * (L - P) and all(a > b for a, b in zip(masks, masks[1:]))
    assert all(torch.equal(c.fed[:, :P], prompt) for c in model.calls)


@pytest.mark.parametrize("P", [1, 9])
@pytest.mark.parametrize("alpha0", [1.0, 0.5])
def test_esolm_steps_cover_generated_positions_and_prompt_rides_the_first_call(P, alpha0):
    """K sums to L − P; the first cached call feeds the prompt then k₁ masks, positions π =
    0 … P−1 first; E[NFE] is the analytic law at n = L − P; call records match step_calls."""
    sampler = make("esolm", num_steps=8, alpha0_eval=alpha0)
    model = fake_for(sampler)
    prompt = prompt_of(2, P)
    plan = sampler.plan(model, batch_size=2, seq_len=L, generator=gen(4), prompt=prompt)
    out = sampler.execute(model, plan, generator=gen(4))
    assert sum(plan.steps) == L - P and out.nfe_total == len(plan.steps) == len(model.calls)
    assert out.info["nfe_expected"] == eso_expected_nfe(LOGLINEAR, L - P, 8, alpha0)
    if alpha0 == 1.0:
        assert out.info["nfe_expected"] == pytest.approx(8 * (1 - (1 - 1 / 8) ** (L - P)))
    first, k1 = model.calls[0], plan.steps[0]
    assert first.fed.shape[1] == P + k1 and torch.equal(first.fed[:, :P], prompt)
    assert bool((first.fed[:, P:] == MASK).all())
    assert torch.equal(first.positions[:, :P], torch.arange(P).expand(2, P))
    assert out.calls[0] == (P + k1, P + k1, P + k1, k1)


def test_esolm_block_calls_equal_expected_calls_with_a_prompt():
    P, S = 4, 3
    for kv in (True, False):
        for alpha0 in (1.0, 0.5):
            sampler = make("esolm_block", num_steps=S, alpha0_eval=alpha0, kv_cache=kv)
            model = fake_for(sampler)
            out = sampler.sample(
                model, batch_size=2, seq_len=L, generator=gen(0), prompt=prompt_of(2, P)
            )
            want = sampler.expected_calls(model.config, batch_size=2, seq_len=L, prompt_len=P)
            assert out.calls == want
            g = (L - P) // S
            assert out.nfe_total == math.floor(S * alpha0) + (L - P) - math.floor(S * alpha0) * g


@pytest.mark.parametrize("P", [3, 4, 9])
@pytest.mark.parametrize("cache", ["efficient", "reference"])
def test_bd3lm_prefill_then_blocks(P, cache):
    """One prefill pass over the ⌊P/L′⌋ whole prompt blocks (no head) before the first block
    call; blocks before j0 are never denoised; first-hitting NFE is exactly (L − P) + stores."""
    Lb = 4
    j0 = P // Lb
    sampler = make("bd3lm", block_size=Lb, mode="first_hitting", cache=cache)
    model = fake_for(sampler, bos_index=7)  # BOS is ignored when a prompt is given
    prompt = prompt_of(2, P)
    out = sampler.sample(model, batch_size=2, seq_len=L, generator=gen(0), prompt=prompt)
    n_blocks = L // Lb - j0
    assert out.nfe_denoise == L - P
    assert out.info["prefill_passes"] == int(j0 > 0) and out.info["store_passes"] == n_blocks
    assert out.nfe_total == L - P + n_blocks + int(j0 > 0)
    calls = model.calls
    if j0:
        assert (calls[0].fed.shape[1], calls[0].start, calls[0].head_rows) == (j0 * Lb, 0, 0)
        assert torch.equal(calls[0].fed, prompt[:, : j0 * Lb])
        calls = calls[1:]
    first_block = calls[0]
    assert first_block.start == j0 * Lb and first_block.head_rows == Lb
    fixed = P - j0 * Lb  # prompt positions inside the first denoised block stay clean
    assert torch.equal(first_block.fed[:, :fixed], prompt[:, j0 * Lb :])
    assert int((first_block.fed == MASK).sum()) == 2 * (Lb - fixed)
    assert out.calls == sampler.expected_calls(model.config, batch_size=2, seq_len=L, prompt_len=P)


def test_bd3lm_nfe_expectation_uses_the_masked_positions():
    """Ancestral loglinear: E[denoising calls] = Σ_blocks T′(1 − (1 − 1/T′)^(b·n_j)), n_j the
    masks of each generated block (P = 6, L′ = 4: n = 2, 4, 4)."""
    sampler = make("bd3lm", block_size=4, steps_per_block=5)
    out = sampler.sample(
        fake_for(sampler), batch_size=3, seq_len=L, generator=gen(0), prompt=prompt_of(3, 6)
    )
    want = sum(5 * (1 - (1 - 1 / 5) ** (3 * n)) for n in (2, 4, 4))
    assert out.info["nfe_denoise_expected"] == pytest.approx(want, rel=1e-12)
    assert out.info["nfe_expected"] == pytest.approx(want + 3 + 1, rel=1e-12)  # stores + prefill


# ---------------------------------------------------------------------------------------------
# Bad prompts: one clear error
# ---------------------------------------------------------------------------------------------

BAD = [
    ([[1, 2]], "prompt has 1 rows but batch_size is 2"),
    (torch.zeros(2, 0, dtype=torch.long), "prompt length is 0 tokens"),
    (torch.zeros(2, L, dtype=torch.long), f"prompt length is {L} tokens with seq_len {L}"),
    (torch.zeros(2, 3), "dtype torch.float32"),
    (torch.zeros(6, dtype=torch.long), "shape (6,)"),
    (torch.tensor([[1, 2], [3, MASK]]), f"prompt[1, 1] is token id {MASK}"),
    (torch.tensor([[1, 2], [3, V]]), f"prompt[1, 1] is token id {V}"),
    ("hello", "prompt is a str"),
]


@pytest.mark.parametrize(("prompt", "message"), BAD)
@pytest.mark.parametrize("name", ["mdlm", "bd3lm", "esolm", "ar", "mdlm_blocks"])
def test_bad_prompts_are_refused_with_one_clear_error(name, prompt, message):
    if isinstance(prompt, list):
        prompt = torch.tensor(prompt)
    sampler = make(name)
    model = fixed_model(
        sampler.families[0], table(), block_size=getattr(sampler.config, "block_size", None)
    )
    with pytest.raises(SamplerError, match=re.escape(message)) as err:
        sampler.sample(model, batch_size=2, seq_len=L, generator=gen(0), prompt=prompt)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)


def test_check_prompt_casts_to_int64_on_the_device():
    model = fixed_model("mdlm", table())
    p = check_prompt(torch.tensor([[1, 2]], dtype=torch.int32), 1, L, model.config, "cpu")
    assert p.dtype == torch.int64 and p.tolist() == [[1, 2]]
    assert check_prompt(None, 1, L, model.config) is None


def test_esolm_block_prompt_length_must_leave_a_multiple_of_num_steps():
    sampler = make("esolm_block", num_steps=4)
    model = fake_for(sampler)
    with pytest.raises(SamplerError, match="seq_len − prompt length = 16 − 3 = 13"):
        sampler.sample(model, batch_size=1, seq_len=L, generator=gen(0), prompt=prompt_of(1, 3))
