"""Every cached path of the DiT equals its uncached oracle (fp32, CPU, non-zero weights).

Oracles (measurement.md §10):
* AR: the full causal forward over the prefix.
* BD3-LM: the block-causal forward over [clean prefix ; noisy block] (both cache styles).
* Eso-LM (B): the full causal forward over the π-sorted sequence with rotary gathered by π.
And the uncached network itself is checked against a naive re-implementation written here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from harness.model.network import DiT, DiTConfig, block_causal_mask, deterministic_init
from tests.conftest import TINY, tiny_model

V, M = TINY["vocab_size"], TINY["vocab_size"] - 1


def rand_tokens(b: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V - 1, (b, n), generator=g)


# ---------------------------------------------------------------------------------------------
# The uncached network against a naive implementation (explicit softmax attention)
# ---------------------------------------------------------------------------------------------


def naive_forward(model: DiT, x: torch.Tensor, pos: torch.Tensor, allowed: torch.Tensor):
    """Independent DiT forward: x (b, n), pos (b, n), allowed (n, n) bool → logits (b, n, V)."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    d, H = cfg.hidden_size, cfg.n_heads
    dh = d // H

    def ln(h, w):
        mu = h.mean(-1, keepdim=True)
        var = ((h - mu) ** 2).mean(-1, keepdim=True)
        return (h - mu) / torch.sqrt(var + 1e-5) * w

    if cfg.adaln:
        half = 128
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
        emb = torch.cat([torch.cos(0 * freqs), torch.sin(0 * freqs)])[None]
        c = emb @ sd["sigma_map.mlp.0.weight"].T + sd["sigma_map.mlp.0.bias"]
        c = F.silu(c) @ sd["sigma_map.mlp.2.weight"].T + sd["sigma_map.mlp.2.bias"]
        c = F.silu(c)
    inv = 10000.0 ** (-torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    ang = pos.double()[..., None] * inv  # (b, n, dh/2)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rot(t):  # (b, n, H, dh)
        t1, t2 = t[..., : dh // 2], t[..., dh // 2 :]
        return t * cos[:, :, None] + torch.cat([-t2, t1], -1) * sin[:, :, None]

    h = sd["vocab_embed.embedding"][x]
    b, n, _ = h.shape
    for i in range(cfg.n_blocks):
        p = f"blocks.{i}."
        if cfg.adaln:
            mods = c @ sd[p + "adaLN_modulation.weight"].T + sd[p + "adaLN_modulation.bias"]
            s1, sc1, g1, s2, sc2, g2 = mods[:, None].chunk(6, -1)
        else:
            s1 = sc1 = s2 = sc2 = 0.0
            g1 = g2 = 1.0
        a = ln(h, sd[p + "norm1.weight"]) * (1 + sc1) + s1
        qkv = (a @ sd[p + "attn_qkv.weight"].T).view(b, n, 3, H, dh)
        q, k, v = rot(qkv[:, :, 0]), rot(qkv[:, :, 1]), qkv[:, :, 2]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)
        scores = scores.masked_fill(~allowed, float("-inf"))
        o = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, n, d)
        h = h + g1 * (o @ sd[p + "attn_out.weight"].T)
        a = ln(h, sd[p + "norm2.weight"]) * (1 + sc2) + s2
        mid = F.gelu(a @ sd[p + "mlp.0.weight"].T + sd[p + "mlp.0.bias"], approximate="tanh")
        h = h + g2 * (mid @ sd[p + "mlp.2.weight"].T + sd[p + "mlp.2.bias"])
    a = ln(h, sd["output_layer.norm_final.weight"])
    if cfg.adaln:
        fm = c @ sd["output_layer.adaLN_modulation.weight"].T
        sh, sc = (fm + sd["output_layer.adaLN_modulation.bias"])[:, None].chunk(2, -1)
        a = a * (1 + sc) + sh
    return a @ sd["output_layer.linear.weight"].T + sd["output_layer.linear.bias"]


@pytest.mark.parametrize("family", ["mdlm", "ar"])
@pytest.mark.parametrize("pattern", ["bidirectional", "causal", "block4"])
def test_forward_matches_naive_implementation(family, pattern):
    model = tiny_model(family)
    b, n = 3, 12
    x = rand_tokens(b, n, 1)
    pos = torch.stack(
        [torch.randperm(16, generator=torch.Generator().manual_seed(s))[:n] for s in range(b)]
    )
    allowed = {
        "bidirectional": torch.ones(n, n, dtype=torch.bool),
        "causal": torch.ones(n, n, dtype=torch.bool).tril(),
        "block4": block_causal_mask(n, 4),
    }[pattern]
    kw = {"attn_mask": allowed} if pattern == "block4" else {"is_causal": pattern == "causal"}
    got = model(x, positions=pos, **kw)
    want = naive_forward(model, x, pos, allowed)
    assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert got.std() > 0.1, "logits must be non-trivial for the test to mean anything"


def test_fixture_weights_are_not_zero():
    model = tiny_model("mdlm")
    for name, p in model.named_parameters():
        assert p.abs().max() > 0, f"{name} is all zero: equivalence tests would be vacuous"


def test_reference_init_zero_head_gives_uniform_logits():
    model = DiT(DiTConfig(family="mdlm", **TINY)).eval()
    out = model(rand_tokens(2, 8, 0))
    assert torch.equal(out, torch.zeros_like(out))


def test_frozen_conditioning_equals_live_and_is_invalidated():
    model = tiny_model("mdlm")
    x = rand_tokens(2, 10, 3)
    frozen = model(x)
    model._frozen = None
    live = model(x)
    assert_close(frozen, live)
    model.freeze_conditioning()
    with torch.no_grad():
        model.blocks[0].adaLN_modulation.bias.add_(0.5)
    assert not torch.allclose(model(x), frozen)  # in-place change: recomputed, not stale
    shifted = model(x)
    model.load_state_dict(model.state_dict())
    assert_close(model(x), shifted)
    with torch.no_grad():  # an EMA-style copy into the weights of an eval model
        for p in model.parameters():
            p.copy_(p * 0.9)
    got = model(x)  # through the (auto-refreshed) frozen vectors
    model._frozen = None
    assert_close(got, model(x))  # live conditioning from the new weights


def test_permutation_equivariance_of_bidirectional_forward():
    """Rearranging tokens while gathering rotary by the same order changes nothing."""
    model = tiny_model("mdlm")
    x = rand_tokens(2, 10, 5)
    pi = torch.stack([torch.randperm(10), torch.randperm(10)])
    out = model(x)
    out_pi = model(torch.gather(x, 1, pi), positions=pi)
    assert_close(out_pi, torch.gather(out, 1, pi[..., None].expand_as(out)))


# ---------------------------------------------------------------------------------------------
# AR: one-token steps against the full causal forward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("prefill", [1, 5])
def test_ar_cached_steps_equal_causal_forward(b, prefill):
    model = tiny_model("ar")
    L = 14
    x = rand_tokens(b, L, 7)
    oracle = model(x, is_causal=True)  # (b, L, V)
    cache = model.new_kv_cache(b, L)
    got = [model.forward_cached(x[:, :prefill], cache, start=0, causal=True)]
    for i in range(prefill, L):
        got.append(model.forward_cached(x[:, i : i + 1], cache, start=i, causal=True))
    assert_close(torch.cat(got, 1), oracle)
    kv = []
    model(x, is_causal=True, kv_out=kv)
    for layer, (k, v) in enumerate(kv):
        assert_close(cache.k[layer], k)
        assert_close(cache.v[layer], v)


# ---------------------------------------------------------------------------------------------
# BD3-LM: block calls against the block-causal forward over [prefix ; block]
# ---------------------------------------------------------------------------------------------


def noisy(block: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(block.shape, generator=g) < 0.5
    return torch.where(keep, block, torch.full_like(block, M))


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("blk", [1, 2, 4, 8])
@pytest.mark.parametrize("style", ["efficient", "reference"])
def test_bd3lm_cached_blocks_equal_block_causal_forward(b, blk, style):
    model = tiny_model("bd3lm", block_size=blk)
    L = 16
    x = rand_tokens(b, L, 11)
    if style == "efficient":
        cache = model.new_kv_cache(b, L)
    else:
        cache = model.new_qkv_cache(b, L, blk)
    for j in range(L // blk):
        P = j * blk
        for step in range(2):  # two denoising calls on different noise, then the store pass
            z = noisy(x[:, P : P + blk], seed=100 * j + step)
            seq = torch.cat([x[:, :P], z], 1)
            want = model(seq, attn_mask=block_causal_mask(P + blk, blk))[:, P:]
            if style == "efficient":
                got = model.forward_cached(z, cache, start=P, causal=False)
            else:
                got = model.forward_cached_reference(z, cache, start=P)
            assert_close(got, want)
        clean = x[:, P : P + blk]
        if style == "efficient":
            assert (
                model.forward_cached(clean, cache, start=P, causal=False, return_logits=False)
                is None
            )
        else:
            assert (
                model.forward_cached_reference(clean, cache, start=P, return_logits=False) is None
            )
        # State: committed rows equal a fresh encoding of the committed tokens.
        kv = []
        model(x[:, : P + blk], attn_mask=block_causal_mask(P + blk, blk), kv_out=kv)
        for layer, (k, v) in enumerate(kv):
            if style == "efficient":
                assert_close(cache.k[layer][:, :, : P + blk], k)
                assert_close(cache.v[layer][:, :, : P + blk], v)
            else:
                raw = cache.qkv[layer][:, : P + blk].view(b, P + blk, 3, 2, 16)
                assert_close(raw[:, :, 2].transpose(1, 2), v)


def test_bd3lm_reference_and_efficient_caches_agree():
    model = tiny_model("bd3lm", block_size=4)
    b, L, blk = 2, 16, 4
    x = rand_tokens(b, L, 13)
    eff, ref = model.new_kv_cache(b, L), model.new_qkv_cache(b, L, blk)
    for P in range(0, L, blk):
        z = noisy(x[:, P : P + blk], seed=P)
        assert_close(
            model.forward_cached(z, eff, start=P, causal=False),
            model.forward_cached_reference(z, ref, start=P),
        )
        model.forward_cached(x[:, P : P + blk], eff, start=P, causal=False, return_logits=False)
        model.forward_cached_reference(x[:, P : P + blk], ref, start=P, return_logits=False)


# ---------------------------------------------------------------------------------------------
# Eso-LM (B): the one-step-lag cached loop against the causal forward over the π-sorted sequence
# ---------------------------------------------------------------------------------------------

STEP_SEQUENCES = {
    "k=1": [1] * 12,
    "mixed": [3, 1, 4, 2, 1, 1],
    "giant": [12],
    "two": [5, 7],
}


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("steps", list(STEP_SEQUENCES))
@pytest.mark.parametrize("perm_seed", [0, 1])
def test_esolm_cached_steps_equal_sorted_causal_forward(b, steps, perm_seed):
    model = tiny_model("esolm")
    L = 12
    K = STEP_SEQUENCES[steps]
    assert sum(K) == L
    g = torch.Generator().manual_seed(perm_seed)
    pi = torch.stack([torch.randperm(L, generator=g) for _ in range(b)])  # (b, L)
    truth = rand_tokens(b, L, 17 + perm_seed)  # tokens committed, in π order
    cos, sin = model.rotary_emb.tables(pi)  # (b, L, 1, d_h): gathered once per generation
    cache = model.new_kv_cache(b, L)
    u, k_prev, n_c = 0, 0, 0
    for k in K:
        fed = torch.cat([truth[:, u - k_prev : u], torch.full((b, k), M)], 1)
        sl = slice(u - k_prev, u + k)
        got = model.forward_cached(
            fed, cache, start=n_c, causal=True, rope=(cos[:, sl], sin[:, sl]), logits=k
        )
        seq = torch.cat([truth[:, :u], torch.full((b, k), M)], 1)
        want = model(seq, positions=pi[:, : u + k], is_causal=True)[:, -k:]
        assert_close(got, want)
        n_c += k_prev
        u, k_prev = u + k, k
        # Cache rows [0, n_c) equal the K/V of a causal forward over the clean π-sorted tokens.
        if n_c:
            kv = []
            model(truth[:, :n_c], positions=pi[:, :n_c], is_causal=True, kv_out=kv)
            for layer, (kk, vv) in enumerate(kv):
                assert_close(cache.k[layer][:, :, :n_c], kk)
                assert_close(cache.v[layer][:, :, :n_c], vv)


def test_esolm_positions_and_rope_arguments_agree():
    model = tiny_model("esolm")
    pi = torch.randperm(10)[None]
    x = rand_tokens(1, 4, 2)
    c1, c2 = model.new_kv_cache(1, 10), model.new_kv_cache(1, 10)
    cos, sin = model.rotary_emb.tables(pi)
    a = model.forward_cached(x, c1, start=0, causal=True, positions=pi[:, :4])
    bb = model.forward_cached(x, c2, start=0, causal=True, rope=(cos[:, :4], sin[:, :4]))
    assert torch.equal(a, bb)


def test_reset_leaves_no_state():
    model = tiny_model("esolm")
    x = rand_tokens(2, 6, 4)
    cache = model.new_kv_cache(2, 8)
    first = model.forward_cached(x, cache, start=0, causal=True)
    model.forward_cached(rand_tokens(2, 2, 9), cache, start=6, causal=True)
    cache.reset()
    assert all(t.abs().sum() == 0 for t in (*cache.k, *cache.v))
    assert torch.equal(model.forward_cached(x, cache, start=0, causal=True), first)
    ref = model.new_qkv_cache(2, 8, 2)
    model.forward_cached_reference(x[:, :2], ref, start=0)
    ref.reset()
    assert all(t.abs().sum() == 0 for t in ref.qkv)


def test_cache_overflow_is_a_clear_error():
    model = tiny_model("ar")
    cache = model.new_kv_cache(1, 4)
    with pytest.raises(ValueError, match="cache has 4 rows; this call needs 6"):
        model.forward_cached(rand_tokens(1, 3, 0), cache, start=3, causal=True)


def test_ar_has_no_adaln_and_reference_parameter_counts():
    for family, count in (("mdlm", 1 + 4 + 2 * 10 + 5), ("ar", 1 + 2 * 8 + 3)):
        model = DiT(DiTConfig(family=family, **TINY))
        assert len(list(model.parameters())) == count
    small = DiT(DiTConfig.from_size("small", family="mdlm", vocab_size=50258))
    assert len(list(small.parameters())) == 130
    assert abs(small.num_parameters() - 169.6e6) < 0.5e6


def test_config_problems_are_reported_together():
    with pytest.raises(ValueError) as err:
        DiTConfig(family="mdml", hidden_size=30, n_heads=4, mask_index=99, vocab_size=33).check()
    msg = str(err.value)
    assert "family" in msg and "mdlm" in msg and "n_heads" in msg and "mask_index" in msg


def test_deterministic_init_is_seeded():
    a = deterministic_init(DiT(DiTConfig(**TINY)), seed=3)
    b = deterministic_init(DiT(DiTConfig(**TINY)), seed=3)
    for (n1, p1), (_, p2) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p1, p2), n1
