"""``mdlm_blocks`` with Fast-dLLM's approximate ``prefix`` / ``dual`` K/V caches.

Oracles:
* ``cache: none`` is today's exact path: tokens pinned from the sampler before the option existed
  (``git show HEAD:samplers/mdlm_semiar.py``, same model, prompt and seed);
* the call log of a position-only fake: each cached call feeds exactly the documented rows
  (block start: the whole canvas; ``prefix``: [s, L) at ``start=s``; ``dual``: [s, e) at
  natural positions, written at cache rows [L, L + n)), and ``expected_calls`` equals the calls;
* an independent transcription of Fast-dLLM's two caches (``fastdllm_oracle``: LLaDA's loop whose
  later block steps attend to K/V taken from the block-start *uncached* forward's ``kv_out``,
  packed densely into a fresh cache, no key mask) on the fp32 tiny DiT: identical tokens.
"""

from __future__ import annotations

import pytest
import torch

from dlmcore.configio import ConfigError
from samplers.base import gumbel_argmax, subs_log_probs
from samplers.mdlm_semiar import MDLMBlocks, MDLMBlocksConfig, block_bounds
from tests.conftest import tiny_model
from tests.samplers.fake_models_b import fixed_model

L = 16


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blocks(**kw) -> MDLMBlocks:
    return MDLMBlocks(MDLMBlocksConfig(**kw))


def prompt_of(b: int, P: int, vocab: int, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, vocab - 1, (b, P), generator=gen(seed))


# Recorded with the sampler at HEAD (before ``cache`` existed): tiny_model("mdlm"), prompt
# prompt_of(2, 3, 33), generator seed 11, L = 16.
PINNED = {
    (4, 2, "confidence"): (
        [
            [3, 14, 15, 23, 13, 5, 21, 8, 5, 24, 16, 21, 5, 24, 5, 22],
            [29, 6, 22, 23, 14, 5, 15, 5, 13, 13, 24, 13, 8, 13, 30, 24],
        ],
        7,
    ),
    (5, 3, "random"): (
        [
            [3, 14, 15, 8, 13, 5, 9, 21, 27, 5, 21, 1, 5, 11, 13, 13],
            [29, 6, 22, 13, 14, 8, 24, 13, 27, 8, 3, 25, 8, 17, 24, 2],
        ],
        9,
    ),
}


@pytest.mark.parametrize(("B", "T", "policy"), sorted(PINNED))
def test_cache_none_is_the_unchanged_exact_path(B, T, policy):
    """Default and explicit ``cache: none`` reproduce the pre-option tokens and NFE exactly."""
    model = tiny_model("mdlm")
    tokens, nfe = PINNED[(B, T, policy)]
    for kw in ({}, {"cache": "none"}):
        out = blocks(block_length=B, steps_per_block=T, policy=policy, **kw).sample(
            model, batch_size=2, seq_len=L, generator=gen(11), prompt=prompt_of(2, 3, 33)
        )
        assert out.tokens.tolist() == tokens and out.nfe_total == nfe
        assert all(c[:3] == (L, L, L) for c in out.calls)  # every call is the full canvas


def test_unknown_cache_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"'cache' is 'dual_cache'; it must be one of none"):
        blocks(cache="dual_cache")


def test_cache_kind_names_the_kv_cache():
    assert blocks().cache_kind() is None
    assert blocks(cache="prefix").cache_kind() == blocks(cache="dual").cache_kind() == "kv"


# ---------------------------------------------------------------------------------------------
# What each cached call feeds (position-only fake, which records every call)
# ---------------------------------------------------------------------------------------------


def fake(V: int = 9, seed: int = 0):
    t = 1.5 * torch.randn(L, V, generator=gen(seed))
    t[:, -1] = 10.0
    return fixed_model("mdlm", t)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize(("P", "B", "T"), [(3, 4, 3), (2, 5, 4), (0, 6, 2)])
def test_cached_calls_feed_the_documented_rows(cache, P, B, T):
    b = 2
    model = fake()
    prompt = prompt_of(b, P, 9) if P else None
    sampler = blocks(block_length=B, steps_per_block=T, cache=cache)
    out = sampler.sample(model, batch_size=b, seq_len=L, generator=gen(0), prompt=prompt)
    call = 0
    for s, e in block_bounds(P, L, B):
        n_calls = min(e - s, T)
        for i in range(n_calls):
            c = model.calls[call]
            assert c.method == "forward_cached" and c.head_rows == e - s
            if i == 0:
                want = (0, 0, L)
            elif cache == "prefix" or e == L:
                want = (s, s, L)
            else:
                want = (L, s, e)
            start, lo, hi = want
            assert c.start == start, (s, e, i)
            assert torch.equal(c.positions[0], torch.arange(lo, hi)), (s, e, i)
            call += 1
    assert call == len(model.calls) == out.nfe_total
    assert out.token_forwards == sum(c[0] for c in out.calls)
    assert out.calls == sampler.expected_calls(model.config, batch_size=b, seq_len=L, prompt_len=P)
    exact = blocks(block_length=B, steps_per_block=T).sample(
        fake(), batch_size=b, seq_len=L, generator=gen(0), prompt=prompt
    )
    assert torch.equal(out.tokens, exact.tokens), "position-only logits: caching changes nothing"


def test_dual_records_count_the_masked_key_rows():
    """P = 3, B = 4, T = 2: blocks [3,7), [7,11), [11,15) have a suffix, [15,16) does not."""
    calls = blocks(block_length=4, steps_per_block=2, cache="dual").expected_calls(
        fake().config, batch_size=1, seq_len=L, prompt_len=3
    )
    full = (L, L, L, 4)
    assert calls == [full, (4, 4, L + 4, 4)] * 3 + [(L, L, L, 1)]
    prefix = blocks(block_length=4, steps_per_block=2, cache="prefix").expected_calls(
        fake().config, batch_size=1, seq_len=L, prompt_len=3
    )
    assert prefix == [full, (13, 13, L, 4), full, (9, 9, L, 4), full, (5, 5, L, 4), (L, L, L, 1)]


# ---------------------------------------------------------------------------------------------
# Equal to an independent transcription of Fast-dLLM's caches (real tiny DiT, fp32)
# ---------------------------------------------------------------------------------------------


def even_split(n: int, steps: int) -> list[int]:
    base, rem = divmod(n, steps)
    return [base + (i < rem) for i in range(steps)]


def cached_logits(model, x, kv, s, e, mode):
    """Later-step block logits against block-start K/V ``kv`` (per layer (k, v), (b, H, L, d)):
    a fresh cache packed densely with the reused rows (prefix; prefix + suffix), then the fed
    rows (prefix: [s, L); dual: [s, e) at natural positions)."""
    b, n = x.shape[0], e - s
    keep = list(range(s)) if mode == "prefix" else list(range(s)) + list(range(e, L))
    cache = model.new_kv_cache(b, L)
    for layer, (k, v) in enumerate(kv):
        cache.k[layer][:, :, : len(keep)] = k[:, :, keep]
        cache.v[layer][:, :, : len(keep)] = v[:, :, keep]
    fed = x[:, s:] if mode == "prefix" else x[:, s:e]
    pos = torch.arange(s, s + fed.shape[1])
    out = model.forward_cached(fed, cache, start=len(keep), causal=False, positions=pos)
    return out[:, :n]


def fastdllm_oracle(model, prompt, block_length, steps_per_block, generator, mode):
    """Fast-dLLM's generate_with_{prefix,dual}_cache with low-confidence remasking."""
    b, P = prompt.shape
    mask = model.config.mask_id
    x = torch.full((b, L), mask, dtype=torch.long)
    x[:, :P] = prompt
    for s in range(P, L, block_length):
        e = min(s + block_length, L)
        kv: list = []
        for i, k in enumerate([k for k in even_split(e - s, steps_per_block) if k]):
            if i == 0:
                logits = model(x, kv_out=kv)[:, s:e]  # block start: full uncached forward
            else:
                logits = cached_logits(model, x, kv, s, e, mode)
            log_p = subs_log_probs(logits, mask)
            x0 = gumbel_argmax(log_p, generator)
            conf = log_p.gather(-1, x0[..., None]).squeeze(-1).exp()
            conf = torch.where(x[:, s:e] == mask, conf, -torch.inf)
            for r in range(b):
                idx = torch.topk(conf[r], k).indices
                x[r, s + idx] = x0[r, idx]
    return x


def loud_model(scale: float = 2.0, seed: int = 0):
    """The tiny DiT with every matrix scaled: logits depend strongly on the other tokens."""
    model = tiny_model("mdlm", seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize(("P", "B", "T"), [(3, 4, 4), (2, 5, 3), (0, 6, 6)])
def test_equals_an_independent_transcription_of_fastdllm(mode, P, B, T):
    """Same generator: identical tokens, on a model where the caches do change the outcome."""
    model = loud_model()
    prompt = prompt_of(3, P, 33)
    with torch.no_grad():
        want = fastdllm_oracle(model, prompt, B, T, gen(7), mode)
    out = blocks(block_length=B, steps_per_block=T, cache=mode).sample(
        model, batch_size=3, seq_len=L, generator=gen(7), prompt=prompt if P else None
    )
    assert torch.equal(out.tokens, want)
    exact = blocks(block_length=B, steps_per_block=T).sample(
        model, batch_size=3, seq_len=L, generator=gen(7), prompt=prompt if P else None
    )
    assert not torch.equal(out.tokens, exact.tokens), "the case must exercise the stale K/V"


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_approximate_cache_is_deterministic_on_repeat(mode):
    model = loud_model()
    sampler = blocks(block_length=4, steps_per_block=4, cache=mode)
    runs = [
        sampler.sample(
            model, batch_size=3, seq_len=L, generator=gen(3), prompt=prompt_of(3, 3, 33)
        ).tokens
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize(("cache", "extra"), [("none", 0), ("prefix", 0), ("dual", 8)])
def test_cache_rows_are_the_rows_a_run_allocates(cache, extra):
    """The runner's analytic cache size uses ``cache_rows``: for ``dual`` the L + B rows that
    ``new_cache`` allocates (the oracle: the allocated cache's own length and bytes)."""
    model = tiny_model("mdlm")
    s = MDLMBlocks(MDLMBlocksConfig(block_length=8, steps_per_block=2, cache=cache))
    plan = s.plan(model, batch_size=2, seq_len=32, generator=torch.Generator())
    assert s.cache_rows(32) == 32 + extra
    allocated = s.new_cache(model, plan.canvas, plan)
    if cache == "none":
        assert allocated is None
        return
    assert allocated.length == 32 + extra
    from harness.measure import memory

    assert allocated.nbytes() == memory.cache_bytes(model.config, "kv", 2, 32 + extra, 4)
